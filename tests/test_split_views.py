"""Splits are views: the train/val/test pools of a source share its one uint8 array (in memory or memory-mapped),
so splitting, class subsets and per-class caps never copy pixels, and every path reads the rows it should."""

from __future__ import annotations

import torch

from cnnlab.data import build_data
from cnnlab.data.loaders import DataLoaderAdapter, TensorLoader, TransformDataset
from cnnlab.data.sources import Pool
from cnnlab.config.typed import data_section


def numbered(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels all hold their row number, so a batch shows which rows it came from."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return images, torch.arange(n) % 5


def test_selecting_twice_is_a_view_of_the_same_rows():
    images, labels = numbered()
    pool = Pool(labels, images=images)
    first = pool.select(torch.tensor([40, 3, 17, 8, 25]))
    second = first.select(torch.tensor([4, 0, 2]))
    assert second.images is images  # no copy
    assert second.rows()[:, 0, 0, 0].tolist() == [25, 40, 17]
    assert second.rows([1])[:, 0, 0, 0].tolist() == [40]
    assert second.labels.tolist() == [0, 0, 2]


def test_loaders_over_a_view_yield_the_views_rows_in_every_path():
    images, labels = numbered()
    index = torch.tensor([7, 1, 33, 20, 9, 44, 2])
    common = dict(mean=[0.0], std=[1 / 255], seed=3)  # (x / 255 - 0) * 255: the raw row numbers come back
    expected = TensorLoader(images[index], labels[index], 3, shuffle=True, **common)
    viewed = TensorLoader(images, labels[index], 3, shuffle=True, index=index, **common)
    for (x, y), (vx, vy) in zip(expected, viewed, strict=True):
        assert torch.equal(x, vx) and torch.equal(y, vy)
    adapter = DataLoaderAdapter(TransformDataset(images, labels[index], index=index), 4, shuffle=False, device="cpu",
                                **common)
    rows = torch.cat([x[:, 0, 0, 0] for x, _ in adapter]).round().long()
    assert rows.tolist() == index.tolist()


def test_the_splits_of_a_built_set_share_one_array(make_cfg):
    cfg = make_cfg("data=digits", "data.input_size=[8,8]", "augment=none", "data.class_subset=[0,1,2,3,4,5]",
                   "data.max_per_class=40")
    data = build_data(data_section(cfg.data), 0, torch.device("cpu"))
    storage = {loader.images.untyped_storage().data_ptr() for loader in (data.train, data.val, data.test)}
    assert len(storage) == 1
    sizes = [len(loader.index) for loader in (data.train, data.val, data.test)]
    assert sizes == [data.sizes["train"], data.sizes["val"], data.sizes["test"]] and sizes[0] == 6 * 40
    together = torch.cat([data.train.index, data.val.index, data.test.index])
    assert len(set(together.tolist())) == len(together)  # no row in two splits


def test_gathering_a_split_for_a_gpu_takes_its_rows_a_chunk_at_a_time():
    from cnnlab.data.loaders import gather_rows

    images, _ = numbered(20)
    index = torch.tensor([19, 0, 5, 5, 11, 2, 7])
    assert torch.equal(gather_rows(images, index, "cpu", chunk=3), images[index])
