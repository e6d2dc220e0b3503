"""Throughput of the MIDAS loader against a plain DataLoader over the same dataset.

Every item does real decoding work: a JPEG decoded with PIL and converted to a tensor,
and a log-power spectrogram computed with numpy from a waveform. The plain loader and
the MIDAS modes use the same batch size, workers and per-item work. They run in
rotation, one epoch each per round, and each MIDAS loader's rate is divided by the plain
loader's rate of the same round; the medians of those paired ratios are reported (the
machine's speed drifts by several percent between rounds, which paired ratios cancel),
with the median rates in aligned samples per second. The consumer reads every aligned
input once, as a training step would; for input level it also builds the misaligned rows
(by default that gather happens on the consumer's side, see
``MidasCollate(materialize_in_worker=...)``). Prints one JSON line.

The streaming case writes the same items as webdataset tar shards on local disk (the JPEG
bytes and the waveform, so the decoding work stays in the loader) and compares the MIDAS
stage (``midas_data.streaming.MidasBatches``, no shuffle of its own) with the same pipeline
ending in webdataset's plain ``.batched()``: ``streaming_ratio``; and the stage's 256-sample
shuffle window with a 256-sample ``.shuffle()`` buffer before ``.batched()``:
``streaming_shuffled_ratio``.

    python benchmarks/loader_overhead.py [--samples 4096] [--batch-size 64] [--workers 2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from midas_data import MidasBatch, midas_loader, set_epoch


class DecodingDataset(Dataset):
    """Items ``{"image": [3, 64, 64] float, "audio": [1, 64, 63] float, "label": int}``."""

    def __init__(self, num_samples: int, num_classes: int = 10, seed: int = 0) -> None:
        from PIL import Image

        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, num_classes, num_samples)
        self.jpegs = []
        for _ in range(32):  # a pool of encoded images, reused: decoding is the work measured
            pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            self.jpegs.append(buf.getvalue())
        self.waves = rng.standard_normal((32, 8000)).astype(np.float32)
        self.window = np.hanning(126).astype(np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return decode_item(self.jpegs[i % 32], self.waves[i % 32], int(self.labels[i]), self.window)

    def raw(self, i: int) -> dict:
        """Item ``i`` before decoding, as shard members."""
        return {"image.jpg": self.jpegs[i % 32], "audio.npy": self.waves[i % 32], "label.cls": int(self.labels[i])}


def decode_item(jpeg: bytes, wave: np.ndarray, label: int, window: np.ndarray) -> dict:
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    frames = np.lib.stride_tricks.sliding_window_view(wave, 126)[::126][:63] * window
    spec = np.log1p(np.abs(np.fft.rfft(frames, axis=1)) ** 2)[:, :64].T.astype(np.float32)
    return {"image": pixels, "audio": torch.from_numpy(spec).unsqueeze(0), "label": label}


class DecodeShardSample:
    """The webdataset ``.map`` of both streaming pipelines: the same work as ``__getitem__``."""

    def __init__(self) -> None:
        self.window = np.hanning(126).astype(np.float32)

    def __call__(self, sample: dict) -> dict:
        wave = np.load(io.BytesIO(sample["audio.npy"]), allow_pickle=False)
        item = decode_item(sample["image.jpg"], wave, int(sample["label.cls"]), self.window)
        return {"__key__": sample["__key__"], "__url__": sample["__url__"], **item}


def streaming_loaders(dataset: DecodingDataset, folder: str, batch_size: int, workers: int) -> dict:
    """Plain ``.batched()`` and the MIDAS stage over the same shards and the same decoding."""
    import webdataset as wds

    from midas_data.streaming import MidasBatches, ShardIndex

    urls = []
    shard_size = max(2, len(dataset) // (4 * max(workers, 1)))
    for first in range(0, len(dataset), shard_size):
        urls.append(f"{folder}/bench-{first // shard_size:06d}.tar")
        with wds.TarWriter(urls[-1]) as sink:
            for i in range(first, min(first + shard_size, len(dataset))):
                sink.write({"__key__": f"{i:09d}", **dataset.raw(i)})
    index = ShardIndex.scan(urls)

    def source() -> wds.WebDataset:
        return wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(DecodeShardSample())

    # Like for like: the stage without its own shuffle against plain batching, and the
    # stage's 256-sample shuffle window against a 256-sample webdataset shuffle buffer.
    in_order = MidasBatches(("image", "audio"), batch_size=batch_size, index=index, shuffle=False)
    windowed = MidasBatches(("image", "audio"), batch_size=batch_size, index=index, window=256)
    common = dict(batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    plain = source().to_tuple("image", "audio", "label").batched(batch_size)
    shuffled = source().shuffle(256).to_tuple("image", "audio", "label").batched(batch_size)
    return {
        "streaming_plain": wds.WebLoader(plain, **common),
        "streaming": wds.WebLoader(source().compose(in_order), **common),
        "streaming_plain_shuffled": wds.WebLoader(shuffled, **common),
        "streaming_shuffled": wds.WebLoader(source().compose(windowed), **common),
    }


def tensors(value) -> list[torch.Tensor]:
    """Every tensor of a plain batch (dict) or a MIDAS batch, as it arrived from the worker."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors(v)]
    if isinstance(value, MidasBatch):
        fields = [value.inputs, value.labels, value.ids, value.plan, value._misaligned or {}, value.extras]
        return [t for v in fields for t in tensors(v)]
    return []


def nbytes(value) -> int:
    return sum(t.numel() * t.element_size() for t in tensors(value))


def segments(value) -> int:
    """Distinct shared-memory storages: each crossed from a worker as its own segment."""
    return len({t.untyped_storage().data_ptr() for t in tensors(value) if t.is_shared()})


def touch(value) -> float:
    """Read every element once, as a training step reading its inputs would."""
    if isinstance(value, torch.Tensor):
        return float(value.sum())
    if isinstance(value, (list, tuple)):
        return sum(touch(v) for v in value)
    return sum(touch(v) for v in value.values())


def epoch_rate(loader: DataLoader, epoch: int) -> tuple[float, int, int]:
    if hasattr(getattr(loader, "batch_sampler", None), "set_epoch"):
        set_epoch(loader, epoch)
    samples, start = 0, time.perf_counter()
    shipped = shared = 0
    for batch in loader:
        # What crossed from the worker, before any consumer-side build.
        shipped, shared = nbytes(batch), segments(batch)
        if isinstance(batch, dict):
            samples += len(batch["label"])
            touch({k: batch[k] for k in ("image", "audio")})
        elif isinstance(batch, (list, tuple)):  # webdataset's plain .batched(): image, audio, label
            samples += len(batch[2])
            touch(batch[:2])
        else:
            samples += len(batch)
            touch(batch.inputs)
            # Input level: the gather that builds the misaligned rows is the consumer's share
            # of the loader's work (a no-op when the worker already built them).
            _ = batch.misaligned_inputs
    return samples / (time.perf_counter() - start), shipped, shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-streaming", action="store_true", help="skip the webdataset case")
    args = parser.parse_args()
    # The workers keep both cores busy; a second intra-op thread in the consuming process
    # only stalls in OpenMP barriers (tens of ms per small op on this machine), for every
    # loader alike.
    torch.set_num_threads(1)

    dataset = DecodingDataset(args.samples)
    common = dict(num_workers=args.workers, persistent_workers=args.workers > 0)
    generator = torch.Generator().manual_seed(0)
    loaders = {
        "plain": DataLoader(dataset, batch_size=args.batch_size, shuffle=True, generator=generator, **common),
        "feature_level": midas_loader(dataset, ("image", "audio"), batch_size=args.batch_size, **common),
        "input_level": midas_loader(dataset, ("image", "audio"), batch_size=args.batch_size, mode="input", **common),
        "input_level_in_worker": midas_loader(
            dataset, ("image", "audio"), batch_size=args.batch_size, mode="input", materialize_in_worker=True, **common
        ),
    }
    folder = tempfile.TemporaryDirectory()
    if not args.no_streaming:
        loaders.update(streaming_loaders(dataset, folder.name, args.batch_size, args.workers))
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    sizes: dict[str, int] = {}
    shared: dict[str, int] = {}
    for loader in loaders.values():  # warm-up: start the persistent workers
        epoch_rate(loader, 0)
    for repeat in range(args.repeats):
        # Rotate the order so that no loader always runs right after another.
        names = list(loaders)
        names = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in names:
            rate, sizes[name], shared[name] = epoch_rate(loaders[name], repeat + 1)
            rates[name].append(rate)
    median = {name: statistics.median(values) for name, values in rates.items()}

    def paired(name: str, baseline: str = "plain") -> float:
        return round(statistics.median(r / p for r, p in zip(rates[name], rates[baseline])), 3)

    streaming = {}
    if not args.no_streaming:
        streaming = {
            "streaming_plain_samples_per_s": round(median["streaming_plain"], 1),
            "streaming_samples_per_s": round(median["streaming"], 1),
            "streaming_ratio": paired("streaming", "streaming_plain"),
            "streaming_shuffled_ratio": paired("streaming_shuffled", "streaming_plain_shuffled"),
        }

    print(
        json.dumps(
            {
                "benchmark": "loader_overhead",
                "plain_samples_per_s": round(median["plain"], 1),
                "input_level_samples_per_s": round(median["input_level"], 1),
                "feature_level_samples_per_s": round(median["feature_level"], 1),
                "input_level_ratio": paired("input_level"),
                "feature_level_ratio": paired("feature_level"),
                "input_level_in_worker_ratio": paired("input_level_in_worker"),
                **streaming,
                "extra_bytes_per_batch": {
                    "feature_level": sizes["feature_level"] - sizes["plain"],
                    "input_level": sizes["input_level"] - sizes["plain"],
                    "input_level_in_worker": sizes["input_level_in_worker"] - sizes["plain"],
                },
                "shared_memory_segments_per_batch": shared,
                "batch_size": args.batch_size,
                "num_workers": args.workers,
                "repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
