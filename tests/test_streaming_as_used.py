"""Streaming as a new user meets it, from docs/streaming.md only: shards written with plain
``webdataset.TarWriter`` (keys like ``clip_000123``, members ``audio.npy``, ``video.npy``,
``cls``) and indexed by a scan, a Hugging Face dataset with uneven shards and a shuffle,
loops that never call ``set_epoch``, a shard cut short, bad values under the skip handler,
an image that does not decode, and a forgotten split by rank. Two ranks run here as two
stages with ``rank=``/``world_size=`` in one process; ``test_streaming_distributed.py``
runs the same on two gloo ranks."""

import io
import os
import random
import traceback
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from midas_data import LateFusionClassifier, MidasDataError, MidasDataWarning, MidasObjective
from midas_data.streaming import (
    MidasBatches,
    MidasIterable,
    ShardEntry,
    ShardIndex,
    batch_counts,
    shard_share,
    split_sizes,
    tar_damage,
    worker_bounds,
)

wds = pytest.importorskip("webdataset")

MODALITIES = ("audio", "video")


def write_clips(folder, sizes, *, audio_sizes=None, prefix="train", images=None):
    """Shards of ``sizes`` samples written as a user would; clip ``i`` holds ``i`` in its
    arrays (audio of 40 values unless ``audio_sizes`` says otherwise), class ``i % 3``."""
    os.makedirs(folder, exist_ok=True)
    urls, i = [], 0
    for number, size in enumerate(sizes):
        urls.append(os.path.join(str(folder), f"{prefix}-{number:05d}.tar"))
        with wds.TarWriter(urls[-1]) as sink:
            for _ in range(size):
                length = (audio_sizes or {}).get(i, 40)
                sample = {
                    "__key__": f"clip_{i:06d}",
                    "audio.npy": np.full(length, i, np.float32),
                    "video.npy": np.full(6, -i, np.float32),
                    "cls": i % 3,
                }
                if images is not None:
                    sample["image.png"] = images(i)
                sink.write(sample)
                i += 1
    return urls


def clip_shards(tmp_path, sizes=(9, 9, 9, 9), **options):
    folder = tmp_path / "shards"
    urls = write_clips(folder, sizes, **options)
    ShardIndex.scan(urls).save(folder / "index.json")
    return ShardIndex.load(folder)


def source(index, stage, **options):
    options.setdefault("shardshuffle", False)
    return wds.WebDataset(index.urls, nodesplitter=stage.split_by_node, empty_check=False, **options).compose(stage)


def loader(index, stage, workers=2, persistent=False, **options):
    return wds.WebLoader(
        source(index, stage, **options), batch_size=None, num_workers=workers, persistent_workers=persistent
    )


def raised_through_workers(error, match, batches_of):
    """``pytest.raises`` around a pass over a loader with workers, which are let go at once:
    kept alive by the traceback until a later garbage collection, they take 5 s each to
    shut down."""
    with pytest.raises(error, match=match) as caught:
        list(batches_of)
    traceback.clear_frames(caught.tb)
    return caught.value


def ids_of(batches):
    return [i for b in batches for i in b.ids.tolist()]


def hf_rows(n, none_at=None):
    datasets = pytest.importorskip("datasets")
    video = [[-float(i)] * 6 for i in range(n)]
    if none_at is not None:
        video[none_at] = None
    data = datasets.Dataset.from_dict(
        {"audio": [[float(i)] * 40 for i in range(n)], "video": video, "label": [i % 3 for i in range(n)]}
    )
    return data.add_column("id", list(range(n))).with_format("torch")


def hf_loaders(data, num_shards, *, shuffle, world_size=2, workers=2, batch_size=16, **split):
    from datasets.distributed import split_dataset_by_node

    loaders = []
    for rank in range(world_size):
        stream = data.to_iterable_dataset(num_shards=num_shards)
        if shuffle:
            stream = stream.shuffle(seed=0, buffer_size=1000)
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size, **split)
        stage = MidasBatches(
            MODALITIES,
            batch_size=batch_size,
            id_field="id",
            index=ShardIndex.for_hf(len(data), num_shards),
            rank=rank,
            world_size=world_size,
        )
        loaders.append(DataLoader(MidasIterable(stream, stage), batch_size=None, num_workers=workers))
    return loaders


# -- Hugging Face: any shard count, shuffled, many epochs ---------------------------------
@pytest.mark.parametrize(
    ("rows", "num_shards", "shuffle", "epochs", "split"),
    [(150, 8, True, 5, {}), (101, 6, False, 3, {}), (100, 5, True, 2, {"strategy": "shards"})],
)
def test_hf_uneven_shards_every_sample_once_and_equal_batches_every_epoch(rows, num_shards, shuffle, epochs, split):
    # datasets shuffles the shard order before dealing shards to ranks and workers: the
    # stage knows only how many shards each worker reads. No set_epoch anywhere. The last
    # case deals 5 shards to 2 ranks (3 and 2: split_dataset_by_node(..., strategy="shards")).
    loaders = hf_loaders(hf_rows(rows), num_shards, shuffle=shuffle, **split)
    planned = loaders[0].dataset.stage.batches_per_epoch(2)
    orders = []
    for epoch in range(epochs):
        per_rank = [list(each) for each in loaders]
        assert [len(batches) for batches in per_rank] == [planned, planned]
        ids = ids_of(per_rank[0]) + ids_of(per_rank[1])
        assert sorted(ids) == list(range(rows))
        assert all(2 <= len(b) <= 16 and b.epoch == epoch for batches in per_rank for b in batches)
        assert all(torch.equal(b.inputs["audio"][:, 0].long(), b.ids) for b in per_rank[0])
        orders.append(ids)
    assert len({tuple(order) for order in orders}) == epochs  # a new order every epoch


def test_hf_batch_plans_fit_every_order_datasets_may_deal_the_shards_in():
    rng = random.Random(0)
    checked = 0
    for _ in range(300):
        world, workers, batch = rng.choice([1, 2, 4]), rng.choice([1, 2, 3]), rng.choice([2, 4, 8, 16])
        num_shards = world * rng.randint(1, 6)
        rows = rng.randint(num_shards, 400)
        counts = ShardIndex.for_hf(rows, num_shards).counts
        try:
            k = batch_counts(counts, world, workers, batch, exact=False)
        except ValueError:
            continue
        checked += 1
        assert len({sum(row) for row in k}) == 1
        bounds = worker_bounds(counts, world, workers, exact=False)
        for _ in range(10):
            order = rng.sample(range(num_shards), num_shards)
            for r in range(world):
                for w in range(workers):
                    mine = order[r::world][w::workers]
                    assert len(mine) == shard_share(num_shards, r, world, w, workers)
                    n = sum(counts[s] for s in mine)
                    low, high = bounds[r][w]
                    assert low <= n <= high
                    # what the stage does: sizes planned for `high`, the rest shared by the last batches
                    planned = split_sizes(high, k[r][w])
                    for emitted in range(k[r][w]):
                        sizes = planned[:emitted] + split_sizes(n - sum(planned[:emitted]), k[r][w] - emitted)
                        assert sum(sizes) == n and all(2 <= size <= batch for size in sizes)
    assert checked > 150


# -- epochs that advance by themselves ----------------------------------------------------
def tiny_model():
    torch.manual_seed(0)
    encoders = {"audio": nn.Linear(40, 8), "video": nn.Linear(6, 8)}
    return LateFusionClassifier(encoders, {"audio": 8, "video": 8}, num_classes=3)


@pytest.mark.parametrize("persistent", [False, True])
def test_webdataset_loop_without_set_epoch_advances_epochs_and_warm_up_ends(tmp_path, persistent):
    index = clip_shards(tmp_path)
    stage = MidasBatches(MODALITIES, "cls", batch_size=8, index=index)
    batches_of = loader(index, stage, persistent=persistent)
    model, objective = tiny_model(), MidasObjective(num_classes=3, modalities=MODALITIES, warmup_epochs=1)
    passes = []
    for _ in range(3):  # no set_epoch anywhere
        misaligned, seen = 0, []
        for batch in batches_of:
            loss, info = objective(model(batch.inputs), batch, model=model)
            misaligned += info["num_misaligned"]
            seen.append((batch.epoch, batch.ids.tolist(), batch.plan.tolist()))
        passes.append((misaligned, seen))
    for epoch, (misaligned, seen) in enumerate(passes):
        assert {e for e, _, _ in seen} == {epoch}
        assert sorted(i for _, ids, _ in seen for i in ids) == list(range(36))
        assert (misaligned == 0) == (epoch == 0)  # warm-up is epoch 0 only
    assert len({tuple(i for _, ids, _ in seen for i in ids) for _, seen in passes}) == 3
    assert objective.epoch == 2


def test_midas_iterable_loop_without_set_epoch_advances_the_dataset_shuffle_too():
    data = hf_rows(60)
    stream = data.to_iterable_dataset(num_shards=4).shuffle(seed=0, buffer_size=16)
    stage = MidasBatches(MODALITIES, batch_size=8, id_field="id", index=ShardIndex.for_hf(60, 4), window=4)
    iterable = MidasIterable(stream, stage)
    epochs = [list(DataLoader(iterable, batch_size=None, num_workers=2)) for _ in range(3)]
    for epoch, batches in enumerate(epochs):
        assert {b.epoch for b in batches} == {epoch} and sorted(ids_of(batches)) == list(range(60))
    assert stream.epoch == 2  # the dataset's own epoch (its shard order, its buffer) followed
    # each pass is exactly what set_epoch(e) on a fresh wrapper gives
    fresh = MidasIterable(stream, MidasBatches(MODALITIES, batch_size=8, id_field="id", index=stage.index, window=4))
    fresh.set_epoch(2)
    assert ids_of(DataLoader(fresh, batch_size=None, num_workers=2)) == ids_of(epochs[2])


def test_set_epoch_still_wins_and_counting_goes_on_from_it(tmp_path):
    index = clip_shards(tmp_path)
    stage = MidasBatches(MODALITIES, "cls", batch_size=8, index=index)
    batches_of = loader(index, stage)
    assert {b.epoch for b in batches_of} == {0}
    stage.set_epoch(5)
    assert {b.epoch for b in batches_of} == {5}
    assert {b.epoch for b in batches_of} == {6}
    assert int(stage.epoch) == 6
    with pytest.warns(MidasDataWarning, match=r"set_epoch\(2\) after epoch 6"):
        stage.set_epoch(2)
    assert {b.epoch for b in batches_of} == {2}


# -- damaged shards -----------------------------------------------------------------------
def cut(url, keep):
    with open(url, "rb") as f:
        data = f.read()
    with open(url, "wb") as f:
        f.write(data[: keep(len(data))])


def test_a_shard_cut_in_half_is_named_as_damaged(tmp_path):
    index = clip_shards(tmp_path)
    cut(index.urls[1], lambda size: size // 2)
    assert len(list(wds.WebDataset([index.urls[1]], shardshuffle=False, empty_check=False))) == 5  # silently
    stage = MidasBatches(MODALITIES, "cls", batch_size=8, index=index)
    raised_through_workers(
        MidasDataError, r"train-00001.tar': the tar file is damaged \(truncated.*5 of its 9", loader(index, stage)
    )
    # With the skip handler: counted under its own name, and one warning per worker and epoch.
    lenient = MidasBatches(MODALITIES, "cls", batch_size=8, index=index, handler=wds.warn_and_continue)
    for epoch in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = list(loader(index, lenient, workers=0, handler=lenient.source_handler))
        reports = [str(w.message) for w in caught if issubclass(w.category, MidasDataWarning)]
        assert len(reports) == 1
        assert f"epoch {epoch}, rank 0, worker 0: 4 missing, 1 damaged shards" in reports[0]
        assert "train-00001.tar" in reports[0] and "truncated" in reports[0]
        assert sorted(ids_of(batches)) == [i for i in range(36) if not 14 <= i < 18]
        assert len(batches) == lenient.batches_per_epoch(1)  # equal work kept
    assert lenient.skip_counts() == {"skipped": 0, "missing": 8, "source_errors": 0, "damaged_shards": 2}
    with pytest.raises(MidasDataError, match=r"train-00001.tar': is damaged \(truncated.*cannot be read to its end"):
        ShardIndex.scan(index.urls)


def test_a_corrupt_or_compressed_and_cut_shard_is_named_as_damaged(tmp_path):
    import gzip
    import tarfile

    index = clip_shards(tmp_path)
    with tarfile.open(index.urls[2]) as tar:
        offset = next(m.offset for m in tar.getmembers() if m.name.startswith("clip_000021"))
    with open(index.urls[2], "r+b") as f:
        f.seek(offset + 20)
        f.write(b"\x07" * 40)  # scribbled over a member header
    assert "fails its checksum" in tar_damage(index.urls[2])
    stage = MidasBatches(MODALITIES, "cls", batch_size=8, index=index)
    with pytest.raises(MidasDataError, match=r"train-00002.tar': the tar file is damaged \(corrupt.*3 of its 9"):
        list(loader(index, stage, workers=0))

    urls = write_clips(tmp_path / "gz", (9, 9))
    for url in urls:
        with open(url, "rb") as f:
            packed = gzip.compress(f.read())
        with open(url + ".gz", "wb") as f:
            f.write(packed[: len(packed) * 2 // 3] if url == urls[1] else packed)
    zipped = [url + ".gz" for url in urls]
    assert tar_damage(zipped[0]) is None and "compressed data" in tar_damage(zipped[1])
    with pytest.raises(MidasDataError, match="train-00001.tar.gz'.*is damaged"):
        ShardIndex.scan(zipped)
    # an index built before the copy was cut
    keys = [f"clip_{i:06d}" for i in range(9, 18)]
    cut_entry = ShardEntry("train-00001.tar.gz", 9, 9, keys, zipped[1])
    gz_index = ShardIndex([*ShardIndex.scan(zipped[:1]).shards, cut_entry])
    gz_stage = MidasBatches(MODALITIES, "cls", batch_size=4, index=gz_index)
    with pytest.raises(MidasDataError, match="train-00001.tar.gz'.*the tar file is damaged"):
        list(source(gz_index, gz_stage))


# -- the skip handler covers what the docs say --------------------------------------------
def test_a_wrongly_shaped_value_is_named_or_skipped_and_counted(tmp_path):
    # Clip 0 (a worker's very first sample) and clip 12 have 39 audio values, not 40.
    index = clip_shards(tmp_path, audio_sizes={0: 39, 12: 39})
    stage = MidasBatches(MODALITIES, "cls", batch_size=8, index=index)
    with pytest.raises(MidasDataError, match=r"key 'clip_000000': modality 'audio' is a Tensor .*shape \(39,\) but "):
        list(loader(index, stage, workers=0))
    lenient = MidasBatches(MODALITIES, "cls", batch_size=8, index=index, handler=wds.warn_and_continue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader(index, lenient))
    assert sorted(ids_of(batches)) == [i for i in range(36) if i not in (0, 12)]
    assert len(batches) == lenient.batches_per_epoch(2)
    assert lenient.skip_counts()["skipped"] == 2


def test_hf_missing_value_is_named_or_skipped_and_counted():
    data = hf_rows(40, none_at=7)

    def batches(**options):
        stage = MidasBatches(MODALITIES, batch_size=8, id_field="id", index=ShardIndex.for_hf(40, 4), **options)
        found = list(DataLoader(MidasIterable(data.to_iterable_dataset(num_shards=4), stage), batch_size=None))
        return stage, found

    with pytest.raises(MidasDataError, match="sample id 7: modality 'video' is None"):
        batches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stage, found = batches(handler=wds.warn_and_continue)
    assert sorted(ids_of(found)) == [i for i in range(40) if i != 7]
    assert stage.skip_counts()["skipped"] == 1 and len(found) == stage.batches_per_epoch(0)


# -- an image that does not decode --------------------------------------------------------
def png_or_junk(i):
    from PIL import Image

    if i == 5:
        return b"this is not a png"
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), i, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_image_that_does_not_decode_names_its_shard_and_key(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    index = clip_shards(tmp_path, sizes=(9, 9), images=png_or_junk)

    def decode_png(data):
        return torch.from_numpy(np.array(Image.open(io.BytesIO(data))))

    def user_map(sample):  # the user's own .map(), before the stage
        return {**sample, "image.png": decode_png(sample["image.png"])}

    stage = MidasBatches(("image", "audio"), "cls", batch_size=4, index=index)
    pipeline = wds.WebDataset(index.urls, shardshuffle=False, nodesplitter=stage.split_by_node, empty_check=False)
    with pytest.raises(Image.UnidentifiedImageError) as caught:  # its own type, with a note
        list(pipeline.map(user_map).compose(stage))
    note = "\n".join(getattr(caught.value, "__notes__", [])) or str(caught.value)
    assert "train-00000.tar" in note and "'clip_000005'" in note and "decoders=" in note
    through_a_worker = wds.WebLoader(pipeline.map(user_map).compose(stage), batch_size=None, num_workers=1)
    raised_through_workers(Image.UnidentifiedImageError, r"(?s)train-00000.tar.*'clip_000005'", through_a_worker)

    # Decoded by the stage: a MidasDataError naming shard, key and member, and skippable.
    in_stage = MidasBatches(("image", "audio"), "cls", batch_size=4, index=index, decoders={"png": decode_png})
    with pytest.raises(MidasDataError, match=r"train-00000.tar', key 'clip_000005': member 'image.png'.*Unidentified"):
        list(source(index, in_stage))
    lenient = MidasBatches(
        ("image", "audio"),
        "cls",
        batch_size=4,
        index=index,
        decoders={"png": decode_png},
        handler=wds.warn_and_continue,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader(index, lenient))
    assert sorted(ids_of(batches)) == [i for i in range(18) if i != 5]
    assert lenient.skip_counts()["skipped"] == 1 and batches[0].inputs["image"].shape[1:] == (4, 4)


# -- the index keeps the paths it was given -----------------------------------------------
def test_scanned_urls_keep_their_folders(tmp_path, monkeypatch):
    urls = write_clips(tmp_path / "data" / "train", (9, 7))
    monkeypatch.chdir(tmp_path)  # not the shards' folder
    scanned = ShardIndex.scan(urls)
    assert scanned.urls == urls
    stage = MidasBatches(MODALITIES, "cls", batch_size=8, index=scanned)
    assert sorted(ids_of(source(scanned, stage))) == list(range(16))
    # saved in another folder (relative paths), loaded back from there
    (tmp_path / "meta").mkdir()
    scanned.save(tmp_path / "meta" / "index.json")
    loaded = ShardIndex.load(tmp_path / "meta")
    assert [os.path.realpath(u) for u in loaded.urls] == [os.path.realpath(u) for u in urls]
    assert loaded.slot("clip_000010", loaded.urls[1]) == 10


# -- a forgotten split by rank ------------------------------------------------------------
def test_hf_without_split_dataset_by_node_says_what_is_missing():
    data = hf_rows(80)
    stream = data.to_iterable_dataset(num_shards=4)
    stage = MidasBatches(MODALITIES, batch_size=8, id_field="id", index=ShardIndex.for_hf(80, 4), rank=1, world_size=2)
    with pytest.raises(
        MidasDataError,
        match=r"rank 1 of 2: the dataset has all 4 shards.*rank should read 2.*"
        r"split_dataset_by_node\(ds, rank=1, world_size=2\)",
    ):
        MidasIterable(stream, stage)
    with pytest.raises(MidasDataError, match="has 4 shards, but the index lists 8"):
        MidasIterable(stream, MidasBatches(MODALITIES, batch_size=8, id_field="id", index=ShardIndex.for_hf(80, 8)))
    # Any other iterable that brings this rank more than its share: the stage says so as it counts.
    with pytest.raises(
        MidasDataError,
        match="got more than the 40 samples that its 2 of the index's 4 shards can hold.*split_dataset_by_node",
    ):
        list(stage(iter(stream)))
