#!/usr/bin/env bash
# Makes the files in this folder with the ffmpeg CLI (Debian 12's ffmpeg 5.1, which has
# libxvid, libx264 and libaom): the kinds of files users download that snvideo did not write.
# Frames come from index_frames.py (each frame shows its own index). Run from this folder:
#     bash make_fixtures.sh
# rot90.raw: frame 5 of rot90.mp4 as the ffmpeg CLI shows it (autorotated, rgb24, 96x128).
set -euo pipefail
SIZE=128x96
frames() { python index_frames.py 128 96 "$1"; }
enc() { local n=$1; shift; frames "$n" | ffmpeg -hide_banner -loglevel error -y \
        -f rawvideo -pix_fmt rgb24 -s $SIZE -r 25 -i - "$@"; }
copy() { ffmpeg -hide_banner -loglevel error -y "$@"; }

# MPEG-4 Part 2 in AVI with packed B-frames, as Xvid/DivX wrote UCF101 and HMDB51
enc 96 -c:v libxvid -bf 2 -vtag XVID -q:v 8 -g 30 xvid_packed.avi
# the same codec without B-frames, and MJPEG: AVI files decoded one frame per chunk
enc 96 -c:v libxvid -bf 0 -vtag XVID -q:v 8 -g 30 xvid_nob.avi
enc 48 -c:v mjpeg -q:v 8 mjpeg.avi
# H.264 with B-frames in AVI (no presentation timestamps at all)
enc 96 -c:v libx264 -bf 3 -g 30 h264_bframes.avi
# MPEG-TS with B-frames (keyframe every 30), and x264's defaults (one GOP here)
enc 96 -c:v libx264 -bf 3 -g 30 h264_bframes.ts
enc 96 -c:v libx264 h264_onegop.ts
# streams cut without a leading keyframe
enc 96 -c:v libx264 -bf 3 -g 30 -movflags +faststart cut_source.mp4
copy -i cut_source.mp4 -ss 1.37 -c copy -copyinkf -avoid_negative_ts disabled cut_nokey.ts
copy -i cut_source.mp4 -ss 1.37 -c copy -copyinkf -avoid_negative_ts disabled cut_nokey.mkv
copy -i cut_source.mp4 -ss 1.37 -c copy -copyinkf -avoid_negative_ts disabled cut_nokey.mp4
# FLV1 (Sorenson Spark) and H.263 in 3GP: no frame size until the decoder has seen a frame
enc 96 -c:v flv -q:v 10 flv1.flv
enc 96 -c:v h263 -q:v 10 h263.3gp
# AV1 in MP4 (libaom, fast preset: hidden alt-ref frames)
enc 96 -c:v libaom-av1 -cpu-used 8 -crf 40 -b:v 0 av1.mp4
# phone-style rotation metadata on a stream copy
copy -i cut_source.mp4 -c copy -metadata:s:v:0 rotate=90 rot90.mp4
copy -i cut_source.mp4 -c copy -metadata:s:v:0 rotate=270 rot270.mov
copy -i cut_source.mp4 -c copy -metadata:s:v:0 rotate=180 rot180.mp4
copy -i rot90.mp4 -vf "select=eq(n\,5)" -frames:v 1 -f rawvideo -pix_fmt rgb24 rot90.raw
# MPEG-4 Part 2 cut without a leading keyframe: its decoder shows the head (against grey)
enc 96 -c:v mpeg4 -g 30 -bf 0 mpeg4_source.mkv
copy -i mpeg4_source.mkv -ss 1.37 -c copy -copyinkf -avoid_negative_ts disabled mpeg4_cut_nokey.mkv
rm mpeg4_source.mkv
