"""Video data pipeline: decoding, annotations, clip sampling, transforms, datasets.

Deliberately does not import snvideo.data.synthetic (test/demo data lives there).
"""
from .annotations import (
    VIDEO_EXTENSIONS,
    Annotations,
    VideoRecord,
    load_annotations,
    load_rawframe_annotations,
    read_class_names,
    write_label_map,
)
from .datasets import RawFrameDataset, ResumableSampler, VideoDataset
from .errors import VideoReadError
from .rawframes import RawFrameReader
from .sampling import test_clip_indices, train_clip_indices
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TestTransform,
    TrainTransform,
    center_crop_box,
    normalize_views,
    random_resized_crop_box,
    resize_short_side,
    test_transform,
    three_crop_boxes,
    train_transform,
)
from .video_reader import VideoReader
from .views import TestViewsInfo, load_test_views, views_from_frames

__all__ = [
    "VIDEO_EXTENSIONS",
    "Annotations",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RawFrameDataset",
    "RawFrameReader",
    "ResumableSampler",
    "TestTransform",
    "TestViewsInfo",
    "TrainTransform",
    "VideoDataset",
    "VideoReadError",
    "VideoReader",
    "VideoRecord",
    "center_crop_box",
    "load_annotations",
    "load_rawframe_annotations",
    "load_test_views",
    "normalize_views",
    "random_resized_crop_box",
    "read_class_names",
    "resize_short_side",
    "test_clip_indices",
    "test_transform",
    "three_crop_boxes",
    "train_clip_indices",
    "train_transform",
    "views_from_frames",
    "write_label_map",
]
