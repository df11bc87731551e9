"""COCO128 through the val/train datasets, dataset yamls, and detect sources (images, globs, lists, video)."""
from __future__ import annotations

import math
import os
import random
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from utils.augment_train import random_flips, random_perspective
from utils.data_config import ROOT, DatasetError, check_dataset
from utils.dataloaders import LoadImages, LoadImagesAndLabels, create_dataloader, img2label_paths

COCO_SUMMARY = "val: 126 images, 2 backgrounds, 0 corrupt, 2 orphan labels"


@pytest.fixture(scope="module")
def coco128(coco128_dir: Path, tmp_path_factory) -> Path:
    """COCO128 seen through symlinked split folders, so the label cache is written in tmp, never in shared assets."""
    root = tmp_path_factory.mktemp("coco128")
    for kind in ("images", "labels"):
        (root / kind).mkdir()
        (root / kind / "train2017").symlink_to(coco128_dir / kind / "train2017", target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def val_set(coco128: Path) -> LoadImagesAndLabels:
    """The val configuration: 640, batch 32, rect, pad 0.5 (Ultralytics val.py defaults for PyTorch weights)."""
    return LoadImagesAndLabels(str(coco128 / "images" / "train2017"), 640, 32, rect=True, pad=0.5, prefix="val: ",
                               nc=80)


def write_yaml(folder: Path, cfg: dict, name: str = "data.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------- dataset yaml


def test_repo_coco128_yaml_matches_shared_names(coco128_dir):
    cfg = yaml.safe_load((ROOT / "data" / "coco128.yaml").read_text())
    names = (coco128_dir / "classes.txt").read_text().splitlines()
    assert [cfg["names"][i] for i in range(80)] == names
    assert cfg["path"] == "../datasets/coco128" and cfg["train"] == cfg["val"] == "images/train2017"
    assert cfg["download"] == "https://ultralytics.com/assets/coco128.zip"


def test_check_dataset_on_shared_coco128(coco128_dir, tmp_path):
    text = (ROOT / "data" / "coco128.yaml").read_text().replace("../datasets/coco128", str(coco128_dir))
    (tmp_path / "coco128.yaml").write_text(text)
    d = check_dataset(tmp_path / "coco128.yaml")
    assert d["nc"] == 80 and len(d["names"]) == 80 and d["names"][0] == "person" and d["names"][79] == "toothbrush"
    assert d["val"] == d["train"] == str(coco128_dir / "images" / "train2017") and d["test"] is None


def test_relative_path_resolves_against_yaml_folder(coco128_dir, tmp_path):
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "c128").symlink_to(coco128_dir, target_is_directory=True)
    y = write_yaml(tmp_path / "sets", {"path": "c128", "train": "images/train2017", "val": ["images/train2017"],
                                       "names": ["a", "b"]})
    d = check_dataset(str(y))
    assert d["path"] == str((tmp_path / "sets" / "c128").resolve()) and d["names"] == ["a", "b"] and d["nc"] == 2
    assert d["val"] == [str(coco128_dir / "images" / "train2017")]


@pytest.mark.parametrize("cfg, key", [
    ({"val": "x", "names": ["a"]}, "'train'"),
    ({"train": "x", "names": ["a"]}, "'val'"),
    ({"train": "x", "val": "x"}, "'names'"),
    ({"train": 3, "val": "x", "names": ["a"]}, "'train' must be a path string"),
    ({"train": "x", "val": "x", "names": "person"}, "'names' must be a non-empty list"),
    ({"train": "x", "val": "x", "names": {"zero": "a"}}, "'names' must map integer ids"),
    ({"train": "x", "val": "x", "names": {0: "a", 2: "b"}}, "ids must be 0..1 without gaps"),
    ({"train": "x", "val": "x", "names": ["a", "b"], "nc": 3}, "'nc' is 3 but 'names' has 2"),
    ({"train": "x", "val": "x", "nc": "80"}, "'nc' must be a positive integer"),
    ({"train": "x", "val": "x", "names": ["a"], "path": ["p"]}, "'path' must be a string"),
])
def test_bad_yaml_keys(tmp_path, cfg, key):
    y = write_yaml(tmp_path, cfg)
    with pytest.raises(DatasetError) as e:
        check_dataset(y)
    assert str(y) in str(e.value) and key in str(e.value) and "\n" not in str(e.value)


def test_nc_only_makes_names(tmp_path):
    (tmp_path / "im").mkdir()
    d = check_dataset(write_yaml(tmp_path, {"path": str(tmp_path), "train": "im", "val": "im", "nc": 2}))
    assert d["names"] == ["class0", "class1"] and d["nc"] == 2


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\nval: x\n")
    with pytest.raises(DatasetError, match=r"bad.yaml: line \d+ invalid YAML"):
        check_dataset(bad)
    with pytest.raises(DatasetError, match="dataset yaml not found"):
        check_dataset(tmp_path / "nope.yaml")


def test_missing_val_without_download(tmp_path):
    y = write_yaml(tmp_path, {"path": str(tmp_path / "ds"), "train": "images", "val": "images", "names": ["a"]})
    with pytest.raises(DatasetError, match=r"data.yaml: dataset not found, missing val path .*ds/images; put"):
        check_dataset(y)


def test_download_failure_is_one_line(tmp_path):
    cfg = {"path": str(tmp_path / "ds"), "train": "images", "val": "images", "names": ["a"],
           "download": "raise ConnectionError('no network here')"}
    with pytest.raises(DatasetError) as e:
        check_dataset(write_yaml(tmp_path, cfg), allow_code=True)
    msg = str(e.value)
    assert "download failed (ConnectionError: no network here)" in msg and "data.yaml" in msg and "\n" not in msg
    with pytest.raises(DatasetError, match="autodownload is off"):
        check_dataset(write_yaml(tmp_path, cfg), autodownload=False)


def test_download_zip_url_extracts_beside_root(tmp_path, coco128_dir):
    """The real URL path, exercised offline with a file:// URL to a zip laid out like coco128.zip."""
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(coco128_dir / "images" / "train2017" / "000000000009.jpg", "tiny/images/train/a.jpg")
        z.writestr("tiny/labels/train/a.txt", "0 0.5 0.5 0.2 0.2\n")
    cfg = {"path": str(tmp_path / "sets" / "tiny"), "train": "images/train", "val": "images/train", "names": ["a"],
           "download": archive.as_uri()}
    d = check_dataset(write_yaml(tmp_path, cfg))
    assert Path(d["val"], "a.jpg").is_file() and (tmp_path / "sets" / "tiny" / "labels" / "train" / "a.txt").is_file()


def test_download_snippet_gets_yaml(tmp_path):
    snippet = "from pathlib import Path\nPath(yaml['path'], 'images').mkdir(parents=True)"
    cfg = {"path": str(tmp_path / "ds"), "train": "images", "val": "images", "names": ["a"], "download": snippet}
    assert Path(check_dataset(write_yaml(tmp_path, cfg), allow_code=True)["val"]).is_dir()


# ---------------------------------------------------------------- COCO128 val path


def test_img2label_paths():
    assert img2label_paths([f"{os.sep}d{os.sep}images{os.sep}x{os.sep}images{os.sep}a.b.jpg"]) == [
        f"{os.sep}d{os.sep}images{os.sep}x{os.sep}labels{os.sep}a.b.txt"]


def test_coco128_scan(val_set, coco128_dir):
    assert val_set.scan_summary == COCO_SUMMARY
    assert len(val_set) == 128 and sum(len(lb) for lb in val_set.labels) == 929
    label_rows = sum(len(np.loadtxt(f, ndmin=2)) for f in val_set.label_files if os.path.isfile(f))
    assert label_rows == 929  # independent count straight from the files
    assert not list((coco128_dir / "labels").glob("*.cache"))  # shared assets untouched
    again = LoadImagesAndLabels(val_set.path, 640, 32, rect=True, pad=0.5, prefix="val: ", nc=80)
    assert again.scan.from_cache and again.scan_summary == COCO_SUMMARY


@pytest.mark.parametrize("pad, largest", [(0.0, 640), (0.5, 672)])
def test_rect_batch_shapes(coco128, pad, largest):
    ds = LoadImagesAndLabels(str(coco128 / "images" / "train2017"), 640, 32, rect=True, pad=pad, nc=80)
    assert ds.batch_shapes.shape == (4, 2) and (ds.batch_shapes % 32 == 0).all()
    assert ds.batch_shapes.max() == largest and ds.batch_shapes.min() >= 320
    ar = ds.shapes[:, 0] / ds.shapes[:, 1]
    assert (np.diff(ar) >= 0).all()  # sorted by h/w so batches share a shape
    for i in (0, 31, 32, 100, 127):
        assert tuple(ds[i][0].shape[1:]) == tuple(ds.batch_shapes[ds.batch[i]])


@pytest.mark.parametrize("index", [0, 40, 77, 127])
def test_val_pixels_and_labels_align(val_set, index):
    """Pixels equal an independent INTER_AREA resize (Ultralytics parity); boxes land where the pixels went."""
    img, labels, f, ((h0, w0), ((rh, rw), (padw, padh))) = val_set[index]
    raw = cv2.imread(f)
    assert raw.shape[:2] == (h0, w0)
    r = 640 / max(h0, w0)
    h, w = math.ceil(h0 * r), math.ceil(w0 * r)
    ref = raw if r == 1 else cv2.resize(raw, (w, h), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    top, left = int(round(padh - 0.1)), int(round(padw - 0.1))
    out = img.numpy().transpose(1, 2, 0)[:, :, ::-1]  # back to HWC BGR
    assert np.array_equal(out[top:top + h, left:left + w], ref)
    assert (out[:top] == 114).all() and (out[top + h:] == 114).all()
    assert (rh, rw) == (h / h0, w / w0)
    lb_file = img2label_paths([f])[0]
    if not os.path.isfile(lb_file):
        assert labels.shape == (0, 6)
        return
    src = np.loadtxt(lb_file, ndmin=2)
    H, W = out.shape[:2]
    # boxes shift by the fractional pad (e.g. 16.5) while pixels start at round(pad - 0.1): Ultralytics does
    # the same and val.py undoes that same pad, so keeping it is what makes mAP match
    np.testing.assert_allclose(labels[:, 1].numpy(), src[:, 0])
    np.testing.assert_allclose(labels[:, 2].numpy() * W, src[:, 1] * w + padw, atol=0.01)
    np.testing.assert_allclose(labels[:, 3].numpy() * H, src[:, 2] * h + padh, atol=0.01)
    assert abs(padw - left) <= 0.5 and abs(padh - top) <= 0.5
    np.testing.assert_allclose(labels[:, 4].numpy() * W, src[:, 3] * w, atol=0.01)
    np.testing.assert_allclose(labels[:, 5].numpy() * H, src[:, 4] * h, atol=0.01)


def test_square_val_never_upscales(coco128):
    ds = LoadImagesAndLabels(str(coco128 / "images" / "train2017"), 320, 8, nc=80)
    img, labels, f, shapes = ds[3]
    assert img.shape == (3, 320, 320) and img.dtype == torch.uint8 and shapes[1][0][0] <= 1


def test_collate_fills_batch_index(val_set):
    batch = [val_set[i] for i in (0, 1, 2)]
    ims, labels, paths, shapes = LoadImagesAndLabels.collate_fn(batch)
    assert ims.shape[0] == 3 and len(paths) == len(shapes) == 3
    counts = [len(b[1]) for b in batch]
    assert labels[:, 0].tolist() == sum(([float(i)] * n for i, n in enumerate(counts)), [])


def test_single_cls_and_ram_cache(coco128):
    # the trainer passes nc=1 with single_cls: ids up to 79 must still be accepted, then merged into 0
    ds = LoadImagesAndLabels(str(coco128 / "images" / "train2017"), 160, 16, single_cls=True, nc=1,
                             cache_images="ram")
    assert ds.scan.corrupt == 0 and sum(len(lb) for lb in ds.labels) == 929
    assert ds.cache_mode == "ram" and all(im is not None for im in ds.ims)
    assert all((lb[:, 0] == 0).all() for lb in ds.labels)
    plain = LoadImagesAndLabels(str(coco128 / "images" / "train2017"), 160, 16)
    assert torch.equal(ds[5][0], plain[5][0])


def test_disk_cache_writes_npy_beside_images(coco128_dir, tmp_path):
    src = sorted((coco128_dir / "images" / "train2017").glob("*.jpg"))[:3]
    (tmp_path / "images").mkdir()
    for f in src:
        (tmp_path / "images" / f.name).write_bytes(f.read_bytes())
    ds = LoadImagesAndLabels(str(tmp_path / "images"), 160, 2, cache_images="disk")
    assert ds.cache_mode == "disk" and all(f.is_file() for f in ds.npy_files)
    assert np.array_equal(np.load(ds.npy_files[0], allow_pickle=False), cv2.imread(ds.im_files[0]))
    plain = LoadImagesAndLabels(str(tmp_path / "images"), 160, 2, cache_images=True)  # True means RAM
    assert plain.cache_mode == "ram" and torch.equal(ds[1][0], plain[1][0])
    with pytest.raises(DatasetError, match="cache must be 'ram', 'disk' or None"):
        LoadImagesAndLabels(str(tmp_path / "images"), 160, 2, cache_images="gpu")


# ---------------------------------------------------------------- train path


@pytest.fixture(scope="module")
def train_set(coco128) -> LoadImagesAndLabels:
    hyp = {"mixup": 0.5, "degrees": 5.0, "shear": 2.0, "flipud": 0.5}
    return LoadImagesAndLabels(str(coco128 / "images" / "train2017"), 256, 16, augment=True, hyp=hyp, nc=80)


def seeded_items(ds, seed: int, idx=(0, 1, 2)):
    random.seed(seed)
    np.random.seed(seed)
    return [ds[i] for i in idx]


def test_seeded_augmentation_is_reproducible(train_set):
    a, b, c = seeded_items(train_set, 0), seeded_items(train_set, 0), seeded_items(train_set, 1)
    for x, y in zip(a, b):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    assert not all(torch.equal(x[0], z[0]) for x, z in zip(a, c))
    for im, labels, _, shapes in a:
        assert im.shape == (3, 256, 256) and shapes is None  # mosaic output is img_size square
        assert labels.shape[1] == 6 and len(labels)
        assert (labels[:, 2:] >= 0).all() and (labels[:, 2:] <= 1).all()


def test_dataloader_workers_are_seeded(coco128):
    path, hyp = str(coco128 / "images" / "train2017"), {"mixup": 0.2}
    batches = []
    for _ in range(2):
        loader, ds = create_dataloader(path, 128, 4, 32, hyp=hyp, augment=True, workers=2, shuffle=True, seed=3)
        batches.append(next(iter(loader)))
    assert loader.num_workers == min(os.cpu_count(), 2) and loader.persistent_workers
    (im1, lb1, p1, _), (im2, lb2, p2, _) = batches
    assert p1 == p2 and torch.equal(im1, im2) and torch.equal(lb1, lb2)


def first_two_epochs(path: str, workers: int) -> list:
    """Every batch of two epochs of a small augmented, shuffled loader (mixup on: two random sources)."""
    loader, _ = create_dataloader(path, 96, 4, 32, hyp={"mixup": 0.5}, augment=True, workers=workers,
                                  shuffle=True, seed=7)
    # 12 of the images (3 batches per epoch) keep it quick; same generator, as create_dataloader wires it
    loader.batch_sampler.sampler = torch.utils.data.RandomSampler(range(12), generator=loader.batch_sampler.generator)
    return [b for _ in range(2) for b in loader]


def test_augmentation_independent_of_workers_and_epochs_differ(coco128):
    """Per-sample seeds: persistent workers, --workers 0 and 2 give the same batches; epochs still differ."""
    path = str(coco128 / "images" / "train2017")
    main, workers = first_two_epochs(path, 0), first_two_epochs(path, 2)
    assert len(main) == len(workers) == 6
    for (im1, lb1, p1, _), (im2, lb2, p2, _) in zip(main, workers):
        assert p1 == p2 and torch.equal(im1, im2) and torch.equal(lb1, lb2)
    assert not torch.equal(main[0][0], main[3][0])  # epoch 2 is a new shuffle with new augmentation


def test_small_dataset_keeps_decoded_images(coco128, monkeypatch):
    """Without --cache a small set keeps each resized image after its first decode; same pixels as a fresh read."""
    import utils.dataloaders as dl
    path = str(coco128 / "images" / "train2017")
    ds = LoadImagesAndLabels(path, 128, 16, augment=True, nc=80)
    assert ds.lazy_cache and ds.cache_mode is None and ds.ims[3] is None
    im, hw0, hw = ds.load_image(3)
    assert ds.ims[3] is im and ds.load_image(3)[0] is im
    monkeypatch.setattr(dl, "LAZY_CACHE_BYTES", 0)  # a "large" dataset: nothing kept
    big = LoadImagesAndLabels(path, 128, 16, augment=True, nc=80)
    fresh = big.load_image(3)
    assert not big.lazy_cache and big.ims[3] is None
    assert np.array_equal(fresh[0], im) and (fresh[1], fresh[2]) == (hw0, hw)


def test_seeded_item_leaves_caller_random_streams_alone(train_set):
    random.seed(5)
    np.random.seed(5)
    want = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    a, b = train_set[(0, 123)], train_set[(0, 123)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (random.random(), np.random.rand()) == want


SHARD_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import torch.distributed as dist
from utils.dataloaders import create_dataloader

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method={store!r}, rank=rank, world_size=2)
try:
    loader, ds = create_dataloader({images!r}, 128, 8, 32, rank=rank, workers=0, shuffle=True)
    out = {{"n": len(ds), "sampler": type(loader.batch_sampler.sampler).__name__, "epochs": []}}
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        out["epochs"].append([i for batch in loader.batch_sampler for i, _ in batch])
finally:
    dist.destroy_process_group()
json.dump(out, open({out!r} % rank, "w"))
"""


def test_distributed_sampler_when_rank_set(coco128, tmp_path):
    """Two real ranks (gloo, two processes): disjoint shards that together cover the dataset, every epoch."""
    import json
    import subprocess
    import sys

    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT.format(root=str(ROOT), store=(tmp_path / "store").as_uri(),
                                          images=str(coco128 / "images" / "train2017"),
                                          out=str(tmp_path / "rank%d.json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    n = r0["n"]
    assert n == r1["n"] == 128 and r0["sampler"] == r1["sampler"] == "DistributedSampler"
    for a, b in zip(r0["epochs"], r1["epochs"]):
        assert len(a) == len(b) == n // 2  # 128 is even: no padding, so an exact split
        assert set(a).isdisjoint(b) and sorted(a + b) == list(range(n))
    assert r0["epochs"][0] != r0["epochs"][1]  # set_epoch reshuffles the shards
    assert r0["epochs"][0] != sorted(r0["epochs"][0])  # shuffle=True really shuffles


def test_rect_disables_shuffle_and_mosaic(coco128):
    loader, ds = create_dataloader(str(coco128 / "images" / "train2017"), 128, 8, 32, augment=True, rect=True,
                                   shuffle=True, workers=0)
    assert not ds.mosaic and isinstance(loader.batch_sampler.sampler, torch.utils.data.SequentialSampler)


def test_perspective_identity_and_flip():
    im = np.random.RandomState(0).randint(0, 255, (64, 96, 3), dtype=np.uint8)
    labels = np.array([[1, 10, 20, 40, 50]], dtype=np.float32)
    out, lb = random_perspective(im.copy(), labels.copy(), degrees=0, translate=0, scale=0, shear=0)
    assert np.array_equal(out, im) and np.allclose(lb, labels)
    norm = np.array([[1, 0.25, 0.5, 0.1, 0.2]], dtype=np.float32)
    flipped, nl = random_flips(im.copy(), norm.copy(), flipud=0.0, fliplr=1.0)
    assert np.array_equal(flipped, im[:, ::-1]) and np.allclose(nl[0], [1, 0.75, 0.5, 0.1, 0.2])


# ---------------------------------------------------------------- detect sources


def test_load_images_folder(assets):
    src = LoadImages(assets / "images", img_size=640, stride=32)
    items = list(src)
    assert len(src) == 2 and [Path(p).name for p, *_ in items] == ["bus.jpg", "zidane.jpg"]
    path, im, im0, cap, s = items[0]
    assert s == f"image 1/2 {path}: " and cap is None
    assert im0.shape == (1080, 810, 3) and im.shape == (3, 640, 480) and im.dtype == np.uint8
    assert im.flags.c_contiguous and np.array_equal(im[:, 320], cv2.resize(im0, (480, 640))[320].T[::-1])


def test_load_images_glob_and_list(coco128_dir, bus_jpg, tmp_path):
    src = LoadImages(str(coco128_dir / "images" / "train2017" / "0000000000[0-4]*.jpg"), img_size=320)
    names = [Path(p).name for p, *_ in src]
    assert names == sorted(names) and len(names) == 7 and names[0] == "000000000009.jpg"
    (tmp_path / "bus.jpg").symlink_to(bus_jpg)
    lst = tmp_path / "sources.txt"
    lst.write_text(f"bus.jpg\n{coco128_dir / 'images' / 'train2017' / '000000000009.jpg'}\n")
    items = list(LoadImages(str(lst), img_size=320, auto=False))
    assert [Path(p).name for p, *_ in items] == ["bus.jpg", "000000000009.jpg"]  # the list's own order
    assert all(im.shape == (3, 320, 320) for _, im, *_ in items)


def test_load_images_video(tmp_path, bus_jpg):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for i in range(6):
        writer.write(np.full((120, 160, 3), 40 * i, np.uint8))
    writer.release()
    (tmp_path / "a.jpg").symlink_to(bus_jpg)
    items = list(LoadImages(tmp_path, img_size=160))
    assert [Path(p).name for p, *_ in items] == ["a.jpg"] + ["clip.mp4"] * 6
    assert items[0][3] is None and isinstance(items[1][3], cv2.VideoCapture)
    assert items[1][4] == f"video 2/2 (1/6) {video}: " and items[-1][4].startswith("video 2/2 (6/6)")
    assert items[1][2].shape == (120, 160, 3) and items[1][1].shape == (3, 128, 160)
    means = [im0.mean() for _, _, im0, *_ in items[1:]]
    assert means == sorted(means)  # frames in order
    strided = list(LoadImages(video, img_size=160, vid_stride=2))
    assert len(strided) == 3 and strided[0][4] == f"video 1/1 (1/3) {video}: "


def test_load_images_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        LoadImages(tmp_path / "missing.jpg")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DatasetError, match="no images or videos found"):
        LoadImages(tmp_path)
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a jpeg")
    with pytest.raises(DatasetError, match=f"cannot read image {fake}"):
        list(LoadImages(fake))
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_text("not a video")
    with pytest.raises(DatasetError, match=f"cannot open video {bad_video}"):
        list(LoadImages(bad_video))


def test_load_images_skips_unreadable_image_and_goes_on(tmp_path, bus_jpg, caplog):
    """One corrupt file in a folder is warned about by name and skipped; the good images are still detected."""
    import shutil
    shutil.copy(bus_jpg, tmp_path / "a_bus.jpg")
    (tmp_path / "b_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    shutil.copy(bus_jpg, tmp_path / "c_bus.jpg")
    with caplog.at_level("WARNING"):
        items = list(LoadImages(tmp_path, img_size=160))
    assert [Path(p).name for p, *_ in items] == ["a_bus.jpg", "c_bus.jpg"]
    assert items[1][4] == f"image 3/3 {tmp_path / 'c_bus.jpg'}: "
    assert any("skipping" in r.message and "b_broken.jpg" in r.message for r in caplog.records)
