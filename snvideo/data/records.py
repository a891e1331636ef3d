"""What an annotation file says about each video: the records every layout reader returns."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VideoRecord:
    path: str  # where the video is (root joined)
    label: int  # class index, -1 when the annotation has no label
    video_id: str  # Kinetics "{youtube_id}_{start:06d}_{end:06d}" or the list file's relative path
    num_frames: int = 0  # rawframe lists only


@dataclass
class Annotations:
    records: list[VideoRecord]
    classes: list[str]
    missing: list[str] = field(default_factory=list)  # ids listed in the file but absent on disk
    format: str = "list"  # "kinetics_csv", "list", "rawframes", "ucf101", "hmdb51", "sthv2", "folders"
