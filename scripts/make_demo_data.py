"""Generate the spoken-digit clips shipped with the ``midas_data.experiments.demo`` dataset.

The demo pairs scikit-learn's handwritten digits with spoken digit names.  The
speech is synthesized once, here, with espeak-ng so that the demo itself needs
neither network access nor system packages at run time; this script is kept so
the shipped file can be audited and rebuilt.

Every *speaker* is one fixed combination of an espeak-ng voice variant (for
example ``m3``, ``f2``, ``klatt4``, ``whisper``), an English accent, a speaking
rate (``-s``) and a pitch (``-p``).  Each speaker says all ten words
"zero".."nine", so speakers can be kept disjoint between the train, val and
test splits.  Each speaker gets its own variant (no variant is used twice),
which makes held-out speakers genuinely unseen voices rather than the same
voice at a slightly different pitch.

Each clip is resampled to 8 kHz mono, trimmed of leading/trailing silence,
centred in a fixed 0.8 s window (6400 samples; the rare longer utterance is cut
at the end), peak-normalised and stored as int16.  Background noise is not
baked in: the dataset mixes it in at load time.

Output: ``midas_data/experiments/demo/data/spoken_digits.npz`` (``np.savez_compressed``,
plain numeric arrays only, loadable with ``allow_pickle=False``):

=================  =======  ==============  ========================================
key                dtype    shape           meaning
=================  =======  ==============  ========================================
``waveforms``      int16    [n_clips, T]    the clips, peak-normalised
``labels``         int64    [n_clips]       spoken digit 0..9
``speaker``        int64    [n_clips]       speaker id 0..n_speakers-1
``variant``        int64    [n_clips]       index into ``VARIANTS`` of this script
``accent``         int64    [n_clips]       index into ``ACCENTS`` of this script
``speed``          int64    [n_clips]       espeak-ng ``-s`` (words per minute)
``pitch``          int64    [n_clips]       espeak-ng ``-p`` (0..99)
``speech_length``  int64    [n_clips]       samples of speech before padding/cutting
``sample_rate``    int64    scalar          8000
=================  =======  ==============  ========================================

With the dataset defaults (image pixel noise std 0.6, audio SNR -5 dB), small
unimodal models trained on the train split reach about 92% (audio) and 60%
(image) accuracy on the val split, so audio is the dominant modality; see
``midas_data/experiments/demo/dataset.py`` for the calibration.

Usage::

    python scripts/make_demo_data.py            # default: 60 speakers, seed 0
    python scripts/make_demo_data.py --speakers 50 --seed 1
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

WORDS: tuple[str, ...] = tuple("zero one two three four five six seven eight nine".split())

# Accents built into espeak-ng (no mbrola voices, they need extra packages).
ACCENTS: tuple[str, ...] = tuple(
    "en en-us en-gb-scotland en-gb-x-rp en-gb-x-gbclan en-gb-x-gbcwmd en-029 en-us-nyc".split()
)

# Voice variants shipped with espeak-ng 1.51; listed explicitly (rather than
# discovered) so that the output does not depend on directory order.
VARIANTS: tuple[str, ...] = tuple(
    """
    m1 m2 m3 m4 m5 m6 m7 m8 f1 f2 f3 f4 f5 klatt klatt2 klatt3 klatt4 klatt5 klatt6
    croak whisper whisperf grandma grandpa Alex Alicia Andrea Andy Annie AnxiousAndy
    Denis Diogo Gene Gene2 Henrique Hugo Jacky Lee Marco Mario Michael Mike Nguyen Storm
    Tweaky adam anika antonio aunty belinda benjamin boris caleb david ed edward edward2
    gustave iven iven2 iven3 iven4 john kaukovalta linda marcelo max michel miguel
    norbert pablo paul pedro quincy rob robert sandro shelby steph steph2 steph3 travis
    victor zac
    """.split()
)

SAMPLE_RATE = 8000
N_SAMPLES = 6400  # 0.8 s
SPEED_RANGE = (130, 220)  # words per minute, inclusive
PITCH_RANGE = (25, 75)  # espeak-ng scale 0..99, inclusive
MAX_BYTES = 4 * 1024 * 1024

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "midas_data/experiments/demo/data/spoken_digits.npz"


def installed_variants() -> set[str]:
    """Variant file names espeak-ng knows; an unknown ``+variant`` is silently ignored by it."""
    out = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True, text=True).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        marker = line.find("!v/")
        if marker >= 0:
            # The file column may contain a space ("Mr serious"); keep the first token.
            names.add(line[marker + 3 :].split()[0])
    return names


def synthesize(word: str, voice: str, speed: int, pitch: int, workdir: Path) -> tuple[np.ndarray, int]:
    """Run espeak-ng once and return the float waveform and its sample rate."""
    wav = workdir / "clip.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), word],
        check=True,
        capture_output=True,
    )
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(rate)


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """Band-limited resampling to ``SAMPLE_RATE`` (torchaudio's windowed sinc)."""
    import torch
    import torchaudio.functional as AF

    if rate == SAMPLE_RATE:
        return audio
    return AF.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()


def trim_silence(audio: np.ndarray, rel_threshold: float = 0.02, frame: int = 80, margin: int = 160) -> np.ndarray:
    """Cut leading/trailing frames whose peak is below ``rel_threshold`` of the clip peak."""
    n_frames = len(audio) // frame
    peaks = np.abs(audio[: n_frames * frame]).reshape(n_frames, frame).max(axis=1)
    active = np.flatnonzero(peaks >= rel_threshold * peaks.max())
    start = max(active[0] * frame - margin, 0)
    stop = min((active[-1] + 1) * frame + margin, len(audio))
    return audio[start:stop]


def fit_window(audio: np.ndarray, n_samples: int = N_SAMPLES) -> np.ndarray:
    """Centre the utterance in a fixed window; keep the start of over-long ones."""
    if len(audio) >= n_samples:
        return audio[:n_samples]
    out = np.zeros(n_samples, dtype=audio.dtype)
    offset = (n_samples - len(audio)) // 2
    out[offset : offset + len(audio)] = audio
    return out


def to_int16(audio: np.ndarray, peak: float = 0.9) -> np.ndarray:
    return np.round(audio / np.abs(audio).max() * peak * 32767).astype(np.int16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", type=int, default=60, help="voices; each says all ten digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    if args.speakers > len(VARIANTS):
        parser.error(f"at most {len(VARIANTS)} speakers (one per voice variant)")
    missing = sorted(set(VARIANTS) - installed_variants())
    if missing:
        raise SystemExit(f"espeak-ng lacks voice variants {missing}; install espeak-ng >= 1.51")

    rng = np.random.default_rng(args.seed)
    variant_ids = rng.permutation(len(VARIANTS))[: args.speakers]
    accent_ids = rng.integers(0, len(ACCENTS), size=args.speakers)
    speeds = rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1, size=args.speakers)
    pitches = rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1, size=args.speakers)

    waves, meta = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for spk in range(args.speakers):
            voice = f"{ACCENTS[accent_ids[spk]]}+{VARIANTS[variant_ids[spk]]}"
            for digit, word in enumerate(WORDS):
                audio, rate = synthesize(word, voice, int(speeds[spk]), int(pitches[spk]), Path(tmp))
                speech = trim_silence(resample(audio, rate))
                waves.append(to_int16(fit_window(speech)))
                meta.append((digit, spk, variant_ids[spk], accent_ids[spk], speeds[spk], pitches[spk], len(speech)))

    meta_arr = np.asarray(meta, dtype=np.int64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        waveforms=np.stack(waves),
        labels=meta_arr[:, 0],
        speaker=meta_arr[:, 1],
        variant=meta_arr[:, 2],
        accent=meta_arr[:, 3],
        speed=meta_arr[:, 4],
        pitch=meta_arr[:, 5],
        speech_length=meta_arr[:, 6],
        sample_rate=np.int64(SAMPLE_RATE),
    )

    size = args.out.stat().st_size
    lengths = meta_arr[:, 6]
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    print(
        f"clips: {len(waves)} = {args.speakers} speakers x {len(WORDS)} digits, {N_SAMPLES} samples at {SAMPLE_RATE} Hz"
    )
    print(
        f"speech length: median {np.median(lengths) / SAMPLE_RATE:.2f} s, "
        f"max {lengths.max() / SAMPLE_RATE:.2f} s, cut: {(lengths > N_SAMPLES).sum()} clips"
    )
    print(f"speed {speeds.min()}..{speeds.max()} wpm, pitch {pitches.min()}..{pitches.max()}")
    if size > MAX_BYTES:
        raise SystemExit(f"output is {size} bytes, above the {MAX_BYTES}-byte budget; use fewer --speakers")


if __name__ == "__main__":
    main()
