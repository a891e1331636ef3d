"""VideoDataset (video files) and RawFrameDataset (extracted JPEG frames).

Training items are (clip (C, T, H, W) float, label); with num_clips > 1, (num_clips, C, T, H, W).
Test items are all views of the video, (num_clips * num_crops, C, T, H, W), clip-major.
normalize=False keeps the standard transforms' clips and views uint8 (a quarter of the bytes
for DataLoader workers to ship); `transforms.normalize_views` with the transform's mean/std
finishes them on the training device (train.py and the evaluator do); `collate_clips` batches
the training clips without reordering their memory. A custom transform's output is returned as
it is either way.

Bad videos never stop training: a video that cannot be read (any exception while its item is
made becomes a VideoReadError naming it) is logged once (per process),
counted, and replaced by another random sample (up to max_retries times). The count lives in
shared memory so DataLoader workers add to the number the trainer reads (dataset.num_failed).
In test mode the VideoReadError propagates so the evaluator can list the video.

Training randomness (clip position, crop, flip, substitutes for bad videos) is drawn from
(seed, epoch, index) when the item is asked for by a key `(index, epoch)`, as
ResumableSampler yields them: a sample then looks the same whichever DataLoader worker loads
it and however far that worker got, so a resumed epoch repeats the interrupted one exactly and
results do not depend on data.num_workers. A plain int index mixes in torch's RNG instead
(seeded per DataLoader worker by torch).
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
from contextlib import contextmanager
from multiprocessing import context as mp_context
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info
from torch.utils.data import default_collate
from torchvision import tv_tensors

from .annotations import Annotations, load_annotations, load_rawframe_annotations, write_label_map
from .errors import VideoReadError, short_message
from .frame_cache import FrameCache
from .rawframes import RawFrameReader
from .sampling import train_clip_indices
from .transforms import TrainTransform, test_transform, train_transform
from .video_reader import VideoReader
from .views import FrameSource, load_test_views

logger = logging.getLogger("snvideo.data")


@contextmanager
def _as_video_error(path: str):
    """Whatever goes wrong while a video is read and transformed surfaces as VideoReadError
    naming the file: skipped and counted in training, listed in test, never a dead DataLoader
    worker (a file's odd properties can break arithmetic far from the decoder)."""
    try:
        yield
    except VideoReadError:
        raise
    except Exception as err:  # noqa: BLE001 - see the docstring; MemoryError is not a file's fault
        if isinstance(err, MemoryError):
            raise
        raise VideoReadError(path, f"{type(err).__name__}: {short_message(err)}") from err


class FailureCounter:
    """An int shared by the dataset and its DataLoader workers (fork or spawn).

    The lock comes from the spawn context: a fork-context lock cannot be handed to spawned
    workers, while a spawn-context one is inherited by forked workers too. Pickled outside of
    worker start-up (deepcopy, torch.save) it degrades to a private counter with the same value.
    """

    def __init__(self, value: int = 0):
        self._value = multiprocessing.get_context("spawn").Value("q", value)

    @property
    def value(self) -> int:
        return int(self._value.value)

    def add(self, amount: int = 1) -> None:
        with self._value.get_lock():
            self._value.value += amount

    def reset(self) -> None:
        with self._value.get_lock():
            self._value.value = 0

    def __getstate__(self):
        if mp_context.get_spawning_popen() is not None:
            return {"shared": self._value}
        return {"value": self.value}

    def __setstate__(self, state) -> None:
        if "shared" in state:
            self._value = state["shared"]
        else:
            self.__init__(state["value"])


class _ClipDataset(Dataset):
    """Sampling, transforms and bad-video handling shared by both datasets."""

    def __init__(
        self,
        annotations: Annotations,
        clip_len: int,
        frame_interval: int,
        num_clips: int,
        test_mode: bool,
        transform: Callable | None,
        short_side: int,
        crop_size: int,
        num_crops: int,
        max_retries: int,
        seed: int,
        source: str,
        normalize: bool = True,
        cache_bytes: int = 0,
    ):
        self.normalize = normalize
        self._cache = FrameCache(cache_bytes) if cache_bytes > 0 else None
        self.clip_len, self.frame_interval, self.num_clips = clip_len, frame_interval, num_clips
        self.test_mode = test_mode
        self.short_side, self.crop_size, self.num_crops = short_side, crop_size, num_crops
        self.max_retries, self.seed = max_retries, seed
        if transform is None:
            transform = test_transform(short_side, crop_size, num_crops) if test_mode else train_transform(short_side, crop_size)
        self.transform = transform
        self.classes: list[str] = annotations.classes
        self.missing: list[str] = annotations.missing
        # numpy arrays instead of lists of objects: forked workers then share them copy-free
        self._paths = np.array([r.path for r in annotations.records], dtype=np.str_)
        self._video_ids = np.array([r.video_id for r in annotations.records], dtype=np.str_)
        self.labels = np.array([r.label for r in annotations.records], dtype=np.int64)
        self._num_frames = np.array([r.num_frames for r in annotations.records], dtype=np.int64)
        self._failures = FailureCounter()
        self._logged_paths: set[str] = set()
        if annotations.missing:
            shown = ", ".join(annotations.missing[:5]) + (", ..." if len(annotations.missing) > 5 else "")
            logger.warning(
                "%d of %d videos listed in %s are missing and were left out (%s); see dataset.missing",
                len(annotations.missing), len(annotations.missing) + len(self._paths), source, shown,
            )
        if len(self._paths) == 0:
            raise ValueError(f"no readable entries in {source} (missing: {len(annotations.missing)})")

    # -- what subclasses provide
    def open(self, index: int) -> FrameSource:
        raise NotImplementedError

    def _reader(self, index: int) -> FrameSource:
        """The video's frames: from the in-memory cache when there is one, else from its file."""
        return self.open(index) if self._cache is None else self._cache.reader(index, self.open)

    # -- public API
    def __len__(self) -> int:
        return len(self._paths)

    @property
    def num_failed(self) -> int:
        """Samples replaced because their video could not be read, summed over all workers."""
        return self._failures.value

    def reset_failures(self) -> None:
        self._failures.reset()

    def video_path(self, index: int) -> str:
        return str(self._paths[index])

    def video_id(self, index: int) -> str:
        return str(self._video_ids[index])

    def write_label_map(self, path: str | os.PathLike) -> None:
        write_label_map(self.classes, path)

    def test_views(self, index: int, normalize: bool = True) -> tuple[torch.Tensor, int]:
        """Test-mode item: (views, label); normalize=False keeps the standard test transform's
        views uint8 (the evaluator normalizes them on its device)."""
        with _as_video_error(self.video_path(index)), self._reader(index) as reader:
            views, _ = load_test_views(
                reader, self.num_clips, self.clip_len, self.frame_interval,
                self.short_side, self.crop_size, self.num_crops, self.transform,
                normalize=normalize,
            )
        return views, int(self.labels[index])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        if self.test_mode:
            return self.test_views(index, normalize=self.normalize)
        if epoch is None:  # torch's RNG (seeded per DataLoader worker) mixed with `seed`
            rng = np.random.default_rng([self.seed, index, int(torch.randint(2**62, ()))])
        else:  # a function of the sample alone: see the module docstring
            rng = np.random.default_rng([self.seed, epoch, index])
        attempt_index, last_error = index, None
        for _ in range(self.max_retries + 1):
            try:
                return self._load_train(attempt_index, rng), int(self.labels[attempt_index])
            except VideoReadError as err:
                self._record_failure(err)
                last_error = err
                attempt_index = int(rng.integers(len(self)))
        raise RuntimeError(
            f"could not load a readable video for item {index} after {self.max_retries} substitutions; "
            f"last failure: {last_error}"
        )

    def _load_train(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        with _as_video_error(self.video_path(index)):
            return self._load_train_clip(index, rng)

    def _load_train_clip(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        with self._reader(index) as reader:
            num_frames = len(reader)
            if num_frames < 1:
                raise VideoReadError(reader.path, "no frames")
            indices = train_clip_indices(num_frames, self.clip_len, self.frame_interval, self.num_clips, rng)
            size = getattr(reader, "frame_size", None)
            standard = isinstance(self.transform, TrainTransform)
            if standard:
                generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            if standard and size is not None:
                # box and flip from the header's frame size, cut and mirrored as each frame is
                # decoded: the same draws, pixels and result as transforming the decoded frames
                box, flip = self.transform.draw(*size, generator)
                frames = reader.get_frames(indices.reshape(-1), crop=box, flip=flip)
            else:
                frames = reader.get_frames(indices.reshape(-1))
        video = frames.permute(0, 3, 1, 2)  # (num_clips * T, C, H, W), channels-last memory
        if standard and size is not None:
            clip = self.transform.resize_crop(video, normalize=self.normalize)
        elif standard:
            clip = self.transform(video, generator, normalize=self.normalize)
        else:
            clip = self.transform(tv_tensors.Video(video))
        if self.num_clips == 1:
            return clip
        # all clips shared one crop; split (C, K*T, H, W) into (K, C, T, H, W)
        channels, _, height, width = clip.shape
        return clip.reshape(channels, self.num_clips, self.clip_len, height, width).transpose(0, 1).contiguous()

    def _record_failure(self, err: VideoReadError) -> None:
        self._failures.add(1)
        if err.path not in self._logged_paths:
            self._logged_paths.add(err.path)
            logger.warning("skipping unreadable video %s (%s); a random other sample replaces it", err.path, err.reason)


class VideoDataset(_ClipDataset):
    """Clips decoded from video files listed in a Kinetics CSV, an mmaction2 list file, a
    UCF101 / HMDB51 / Something-Something v2 annotation, or a folder of class folders.

    The annotation format is detected (see snvideo.data.annotations); listed videos missing on
    disk are left out, named in `dataset.missing` and summarised in one warning. `classes` (a
    list or a label-map file) fixes the class order; `dataset.classes` is the order in use and
    `dataset.write_label_map(path)` saves it. `classes_file` is the dataset's own class file
    (classInd.txt, labels.json, or a label map) and `split` the HMDB51 split; an HMDB51 split
    gives its training videos (marked 1) to a training dataset and its test videos (marked 2)
    in test mode. For a folder of class folders `root` may be empty (video names are then
    relative to that folder).

    transform=None applies train_transform(short_side, crop_size) in training and
    test_transform(short_side, crop_size, num_crops) in test mode; normalize=False keeps their
    output uint8 (see the module docstring). decode_threads: decoder threads per open video
    (1: DataLoader workers are the parallelism; 0: the decoder's choice). rotation: "auto"
    turns frames upright as players show them (phone videos), "ignore" keeps them as stored.
    cache_bytes > 0 keeps
    decoded videos in memory, up to that many bytes per process (snvideo.data.frame_cache). A custom transform gets a
    tv_tensors.Video of uint8 frames (T, C, H, W) and returns a float clip (C, T, H, W) (test
    mode: (C, T, H, W) or (crops, C, T, H, W) per clip). With num_clips > 1, training clips are
    transformed together (one crop for all) and returned as (num_clips, C, T, H, W).
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        root: str | os.PathLike,
        clip_len: int = 16,
        frame_interval: int = 2,
        num_clips: int = 1,
        test_mode: bool = False,
        transform: Callable | None = None,
        short_side: int = 256,
        crop_size: int = 224,
        num_crops: int = 1,
        backend: str = "auto",
        max_retries: int = 10,
        classes: Sequence[str] | str | None = None,
        seed: int = 0,
        classes_file: str | os.PathLike | None = None,
        split: int | None = None,
        normalize: bool = True,
        decode_threads: int = 1,
        cache_bytes: int = 0,
        rotation: str = "auto",
    ):
        self.ann_file, self.root, self.backend = os.fspath(ann_file), os.fspath(root), backend
        self.decode_threads, self.rotation = decode_threads, rotation
        annotations = load_annotations(ann_file, root, classes, classes_file=classes_file, split=split,
                                       subset="test" if test_mode else "train")
        self.format = annotations.format
        if self.format == "folders" and not self.root:
            self.root = self.ann_file
        super().__init__(
            annotations, clip_len, frame_interval, num_clips, test_mode, transform,
            short_side, crop_size, num_crops, max_retries, seed, source=self.ann_file,
            normalize=normalize, cache_bytes=cache_bytes,
        )

    def open(self, index: int) -> VideoReader:
        return VideoReader(str(self._paths[index]), backend=self.backend, num_threads=self.decode_threads,
                           rotation=self.rotation)


class RawFrameDataset(_ClipDataset):
    """Clips read from folders of extracted frames listed as `frame_dir total_frames label`
    (cache_bytes: decoded frames kept in memory, as for VideoDataset)."""

    def __init__(
        self,
        ann_file: str | os.PathLike,
        root: str | os.PathLike,
        clip_len: int = 16,
        frame_interval: int = 2,
        num_clips: int = 1,
        test_mode: bool = False,
        transform: Callable | None = None,
        short_side: int = 256,
        crop_size: int = 224,
        num_crops: int = 1,
        max_retries: int = 10,
        classes: Sequence[str] | str | None = None,
        seed: int = 0,
        filename_tmpl: str = "img_{:05d}.jpg",
        start_index: int = 1,
        normalize: bool = True,
        cache_bytes: int = 0,
    ):
        self.ann_file, self.root = os.fspath(ann_file), os.fspath(root)
        self.filename_tmpl, self.start_index = filename_tmpl, start_index
        annotations = load_rawframe_annotations(ann_file, root, classes)
        self.format = annotations.format
        super().__init__(
            annotations, clip_len, frame_interval, num_clips, test_mode, transform,
            short_side, crop_size, num_crops, max_retries, seed, source=self.ann_file,
            normalize=normalize, cache_bytes=cache_bytes,
        )

    def open(self, index: int) -> RawFrameReader:
        return RawFrameReader(
            str(self._paths[index]), int(self._num_frames[index]), self.filename_tmpl, self.start_index
        )


def collate_clips(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """DataLoader collate for (clip, label) items that keeps each clip's memory order.

    The standard transform's uint8 clips are (C, T, H, W) views of channels-last frames;
    default_collate would stack them into a contiguous batch, a transposing copy in the worker.
    Here they are copied as they lie (the batch comes out channels_last_3d) and the device
    transposes while normalizing (`normalize_views`). Float clips go through default_collate.
    """
    clips = [item[0] for item in batch]
    if clips[0].dtype != torch.uint8:
        return default_collate(batch)
    elem = clips[0]
    order = sorted(range(elem.dim()), key=lambda d: -elem.stride(d))  # outermost first
    shape = [len(clips)] + [elem.shape[d] for d in order]
    if get_worker_info() is not None:  # a worker: the batch goes straight into shared memory,
        # as default_collate does it (share_memory_() on a finished batch would copy it again)
        storage = elem._typed_storage()._new_shared(math.prod(shape), device=elem.device)
        out = elem.new(storage).resize_(shape)
    else:
        out = torch.empty(shape, dtype=elem.dtype)
    for target, clip in zip(out, clips):
        target.copy_(clip.permute(order))
    inverse = [0] + [1 + order.index(d) for d in range(elem.dim())]
    labels = torch.tensor([int(item[1]) for item in batch], dtype=torch.int64)
    return out.permute(inverse), labels


class ResumableSampler(Sampler):
    """Training order: a shuffled share of the dataset per process, startable mid-epoch.

    Yields keys `(index, epoch)` (see the module docstring). The order is a function of
    (seed, epoch) alone, the same permutation DistributedSampler(shuffle=True, drop_last=True)
    draws, split over `num_replicas` processes. `set_epoch(epoch, start)` makes the next pass
    begin at position `start` of this process's share (a resumed run passes the samples it
    already trained on); the pass after that starts from 0 again.
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        self.size, self.num_replicas, self.rank = size, num_replicas, rank
        self.seed, self.shuffle = seed, shuffle
        self.num_samples = size // num_replicas  # per process; the tail of the order is dropped
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside this process's {self.num_samples} samples")
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        """This process's whole share of the epoch, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        return order[: self.num_samples * self.num_replicas][self.rank :: self.num_replicas]

    def __iter__(self):
        keys = [(index, self.epoch) for index in self.indices()[self.start :]]
        self.start = 0
        return iter(keys)

    def __len__(self) -> int:
        return self.num_samples - self.start
