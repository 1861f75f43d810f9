"""A minimal H.264 encoder: Constrained Baseline, every picture an IDR of I_PCM macroblocks.

I_PCM macroblocks carry raw 4:2:0 samples, so no transform, prediction or
entropy coder is needed and any conforming decoder reproduces the input
exactly (up to the RGB -> YUV conversion). Files are large (about 1.5 bytes per
pixel) but that is irrelevant for a simulator, and encoding stays cheap in pure
Python because the heavy lifting is done with whole-buffer operations:

* RGB -> YUV uses "SIMD within a big integer": a plane is widened into 16 or
  32-bit lanes of one Python ``int``; multiplying and adding such ints computes
  every lane at once in C, and the result bytes are sliced back out.
* Macroblock reordering moves 8-byte groups with strided ``memoryview``
  assignments, 48 per macroblock row instead of 384 copies per macroblock.
"""

from __future__ import annotations

from collections.abc import Iterator

from .frames import Frame

__all__ = ["H264Encoder", "escape_rbsp"]

_NAL_SPS = 7
_NAL_PPS = 8
_NAL_IDR = 5

# (level_idc, MaxMBPS, MaxFS, MaxBR in kbit/s, MinCR) from H.264 Table A-1.
_LEVELS: tuple[tuple[int, int, int, int, int], ...] = (
    (10, 1485, 99, 64, 2),
    (11, 3000, 396, 192, 2),
    (12, 6000, 396, 384, 2),
    (13, 11880, 396, 768, 2),
    (20, 11880, 396, 2000, 2),
    (21, 19800, 792, 4000, 2),
    (22, 20250, 1620, 4000, 2),
    (30, 40500, 1620, 10000, 2),
    (31, 108000, 3600, 14000, 4),
    (32, 216000, 5120, 20000, 4),
    (40, 245760, 8192, 20000, 4),
    (41, 245760, 8192, 50000, 2),
    (42, 522240, 8704, 50000, 2),
    (50, 589824, 22080, 135000, 2),
    (51, 983040, 36864, 240000, 2),
    (52, 2073600, 36864, 240000, 2),
    (60, 4177920, 139264, 240000, 2),
    (61, 8355840, 139264, 480000, 2),
    (62, 16711680, 139264, 800000, 2),
)

_PROFILE_BASELINE = 66
_CONSTRAINED_BASELINE_FLAGS = 0b1100_0000  # constraint_set0_flag and constraint_set1_flag
_MB_BYTES = 384  # 256 luma + 2 x 64 chroma samples
# After the first macroblock every mb_type starts byte-aligned: ue(25) is
# 0b000011010 and 7 pcm_alignment_zero_bits follow.
_MB_PREFIX = b"\x0d\x00"
# Pixels converted per step: big enough that per-step overhead is noise, small
# enough that the dozen temporary planes stay a few megabytes.
_BAND_PIXELS = 1 << 18
# BT.601 (SMPTE 170M) colour description for the VUI and the MP4 'colr' box.
BT601 = 6


class _Bits:
    """MSB-first bit writer for the few header fields; samples never go through it."""

    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def u(self, bits: int, value: int) -> None:
        self.value = (self.value << bits) | value
        self.count += bits

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() * 2 - 1, code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def align_zero(self) -> None:
        self.u(-self.count % 8, 0)

    def trailing(self) -> None:
        """rbsp_trailing_bits: a stop bit, then zeros up to the byte boundary."""
        self.u(1, 1)
        self.align_zero()

    def to_bytes(self) -> bytes:
        assert self.count % 8 == 0, "unaligned bitstream"
        return self.value.to_bytes(self.count // 8, "big")


def escape_rbsp(rbsp: bytes) -> bytes:
    """Insert emulation-prevention bytes so no 00 00 0x (x <= 3) appears in a NAL unit."""
    hit = rbsp.find(b"\x00\x00")
    if hit < 0:
        return rbsp
    out = bytearray()
    start = 0
    while hit >= 0:
        if hit + 2 < len(rbsp) and rbsp[hit + 2] <= 3:
            out += rbsp[start : hit + 2]
            out.append(3)
            start = hit + 2
            hit = rbsp.find(b"\x00\x00", start)
        else:
            hit = rbsp.find(b"\x00\x00", hit + 1)
    out += rbsp[start:]
    return bytes(out)


def _nal(nal_type: int, rbsp: bytes) -> bytes:
    return bytes((0x60 | nal_type,)) + escape_rbsp(rbsp)  # nal_ref_idc = 3


def _repeat(value: int, width: int, count: int) -> int:
    """An int whose ``count`` lanes of ``width`` bytes all hold ``value``."""
    return int.from_bytes(value.to_bytes(width, "little") * count, "little")


def _pick_level(mb_width: int, mb_height: int, fps: float) -> int:
    """Smallest level whose frame size, macroblock rate and bit rate fit; else the top one.

    The first-picture CPB constraints are not modelled: decoders do not check
    levels, but players use them to pick a decoder, so an honest estimate helps.
    """
    mbs = mb_width * mb_height
    frame_bits = (mbs * (_MB_BYTES + 2) + 64) * 8
    for level, max_mbps, max_fs, max_kbps, min_cr in _LEVELS:
        side = 8 * max_fs
        if (
            mbs <= max_fs
            and mb_width * mb_width <= side
            and mb_height * mb_height <= side
            and mbs * fps * min_cr * (_MB_BYTES + 2) <= max_mbps * _MB_BYTES
            and frame_bits * fps <= max_kbps * 1000
        ):
            return level
    return _LEVELS[-1][0]


class H264Encoder:
    """Encodes same-sized RGB frames into H.264 IDR access units (one NAL unit each).

    4:2:0 needs even dimensions, so an odd width or height loses its last
    column or row (a 1-pixel side is doubled instead). ``width`` and ``height``
    report the size actually coded and displayed.
    """

    def __init__(self, width: int, height: int, fps: float) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"video size must be positive, got {width}x{height}")
        self.source_width = width
        self.source_height = height
        self.width = max(2, width - width % 2)
        self.height = max(2, height - height % 2)
        self.mb_width = (self.width + 15) // 16
        self.mb_height = (self.height + 15) // 16
        self.level = _pick_level(self.mb_width, self.mb_height, fps)
        self.profile = _PROFILE_BASELINE
        self.constraint_flags = _CONSTRAINED_BASELINE_FLAGS
        self.sps = _nal(_NAL_SPS, self._sps_rbsp())
        self.pps = _nal(_NAL_PPS, self._pps_rbsp())
        self._frames = 0
        full_w = self.mb_width * 16
        # Pictures are converted a band of macroblock rows at a time, so working
        # memory stays near _BAND_PIXELS whatever the resolution.
        self._band_mb_rows = max(1, _BAND_PIXELS // (full_w * 16))
        self._constants: dict[int, _BandConstants] = {}

    # -- parameter sets -------------------------------------------------
    def _sps_rbsp(self) -> bytes:
        b = _Bits()
        b.u(8, self.profile)
        b.u(8, self.constraint_flags)
        b.u(8, self.level)
        b.ue(0)  # seq_parameter_set_id
        b.ue(0)  # log2_max_frame_num_minus4
        b.ue(2)  # pic_order_cnt_type: output order = decoding order
        b.ue(1)  # max_num_ref_frames (an IDR is always a reference picture)
        b.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
        b.ue(self.mb_width - 1)
        b.ue(self.mb_height - 1)
        b.u(1, 1)  # frame_mbs_only_flag
        b.u(1, 1)  # direct_8x8_inference_flag
        crop_right = (self.mb_width * 16 - self.width) // 2  # in 2-sample units for 4:2:0
        crop_bottom = (self.mb_height * 16 - self.height) // 2
        if crop_right or crop_bottom:
            b.u(1, 1)
            for offset in (0, crop_right, 0, crop_bottom):  # left, right, top, bottom
                b.ue(offset)
        else:
            b.u(1, 0)
        b.u(1, 1)  # vui_parameters_present_flag
        b.u(1, 0)  # aspect_ratio_info_present_flag
        b.u(1, 0)  # overscan_info_present_flag
        b.u(1, 1)  # video_signal_type_present_flag
        b.u(3, 5)  # video_format: unspecified
        b.u(1, 0)  # video_full_range_flag: limited (16-235) range
        b.u(1, 1)  # colour_description_present_flag
        for code in (BT601, BT601, BT601):  # primaries, transfer, matrix
            b.u(8, code)
        b.u(1, 0)  # chroma_loc_info_present_flag
        b.u(1, 0)  # timing_info_present_flag: the container carries timing
        b.u(1, 0)  # nal_hrd_parameters_present_flag
        b.u(1, 0)  # vcl_hrd_parameters_present_flag
        b.u(1, 0)  # pic_struct_present_flag
        b.u(1, 1)  # bitstream_restriction_flag: lets decoders output without delay
        b.u(1, 1)  # motion_vectors_over_pic_boundaries_flag
        b.ue(0)  # max_bytes_per_pic_denom
        b.ue(0)  # max_bits_per_mb_denom
        b.ue(15)  # log2_max_mv_length_horizontal
        b.ue(15)  # log2_max_mv_length_vertical
        b.ue(0)  # max_num_reorder_frames
        b.ue(1)  # max_dec_frame_buffering
        b.trailing()
        return b.to_bytes()

    @staticmethod
    def _pps_rbsp() -> bytes:
        b = _Bits()
        b.ue(0)  # pic_parameter_set_id
        b.ue(0)  # seq_parameter_set_id
        b.u(1, 0)  # entropy_coding_mode_flag: CAVLC
        b.u(1, 0)  # bottom_field_pic_order_in_frame_present_flag
        b.ue(0)  # num_slice_groups_minus1
        b.ue(0)  # num_ref_idx_l0_default_active_minus1
        b.ue(0)  # num_ref_idx_l1_default_active_minus1
        b.u(1, 0)  # weighted_pred_flag
        b.u(2, 0)  # weighted_bipred_idc
        b.se(0)  # pic_init_qp_minus26
        b.se(0)  # pic_init_qs_minus26
        b.se(0)  # chroma_qp_index_offset
        b.u(1, 1)  # deblocking_filter_control_present_flag: lets slices turn it off
        b.u(1, 0)  # constrained_intra_pred_flag
        b.u(1, 0)  # redundant_pic_cnt_present_flag
        b.trailing()
        return b.to_bytes()

    # -- pictures ---------------------------------------------------------
    def _slice_head(self, idr_pic_id: int) -> bytes:
        """Slice header plus the first macroblock's mb_type and PCM alignment."""
        b = _Bits()
        b.ue(0)  # first_mb_in_slice
        b.ue(7)  # slice_type: I, and every slice of the picture is I
        b.ue(0)  # pic_parameter_set_id
        b.u(4, 0)  # frame_num (log2_max_frame_num = 4); always 0 for IDR
        b.ue(idr_pic_id)
        b.u(1, 0)  # no_output_of_prior_pics_flag
        b.u(1, 0)  # long_term_reference_flag
        b.se(0)  # slice_qp_delta
        b.ue(1)  # disable_deblocking_filter_idc: PCM samples must stay untouched
        b.ue(25)  # mb_type I_PCM
        b.align_zero()  # pcm_alignment_zero_bit
        return b.to_bytes()

    def _band_rgb(self, frame: Frame, first_row: int, rows: int) -> bytes:
        """RGB rows of the macroblock-aligned picture, edges replicated (cropped again)."""
        full_w = self.mb_width * 16
        stride = frame.width * 3
        last = min(frame.height, self.height) - 1  # last row that is displayed
        end = first_row + rows
        if frame.width == full_w and end - 1 <= last:
            return frame.rgb[first_row * stride : end * stride]
        used = min(frame.width, self.width) * 3
        view = memoryview(frame.rgb)
        out = []
        for y in range(first_row, min(end, last + 1)):
            row = view[y * stride : y * stride + used]
            out.append(bytes(row) + bytes(row[-3:]) * (full_w - used // 3))
        if end - 1 > last:
            row = view[last * stride : last * stride + used]
            edge = bytes(row) + bytes(row[-3:]) * (full_w - used // 3)
            out.extend([edge] * (end - max(first_row, last + 1)))
        return b"".join(out)

    def _band_constants(self, pixels: int) -> _BandConstants:
        constants = self._constants.get(pixels)
        if constants is None:
            constants = self._constants[pixels] = _BandConstants(pixels)
        return constants

    def _yuv(self, rgb: bytes) -> tuple[bytes, bytes, bytes]:
        """BT.601 limited-range planes of a band: full-size Y, 2x2-averaged Cb and Cr."""
        full_w = self.mb_width * 16
        pixels = len(rgb) // 3
        k = self._band_constants(pixels)
        row_bits = 16 * full_w
        luma = k.luma_bias
        sums = []
        for channel, weight in zip(range(3), (66, 129, 25), strict=True):
            # Widen the channel into 16-bit little-endian lanes of one int. The
            # scratch buffer's odd bytes stay zero, and reusing it avoids the
            # page faults a fresh multi-megabyte buffer costs.
            k.scratch[0::2] = rgb[channel::3]
            lanes = int.from_bytes(k.scratch, "little")
            # Y = 16 + (66 R + 129 G + 25 B + 128) >> 8; no lane ever reaches 2**16.
            luma += lanes * weight
            # 2x2 sums without unpacking: add the right neighbour (one lane up),
            # then the row below (one row of lanes up). Even lanes of even rows
            # now hold the sums; clearing odd lanes makes them 32-bit lanes.
            lanes += lanes >> 16
            lanes += lanes >> row_bits
            sums.append(lanes & k.even_lanes)
            del lanes
        y_plane = luma.to_bytes(pixels * 2, "little")[1::2]
        del luma
        s_red, s_green, s_blue = sums
        del sums
        # Cb = 128 + (-38 R - 74 G + 112 B + 128) >> 8 on 2x2 sums (hence >> 10),
        # scaled by 64 so the result is byte 2 of each 32-bit lane. Every lane
        # stays in [0, 2**24), so the big-int sum never borrows across lanes.
        half_w = full_w // 2
        planes = []
        for r, g, b in ((-2432, -4736, 7168), (7168, -6016, -1152)):
            chroma = s_red * r + s_green * g + s_blue * b + k.chroma_bias
            every_row = memoryview(chroma.to_bytes(pixels * 2, "little")[2::4])
            del chroma
            rows = range(0, len(every_row), half_w)[0::2]
            planes.append(b"".join([every_row[at : at + half_w] for at in rows]))
        return y_plane, planes[0], planes[1]

    def _macroblocks(self, y_plane: bytes, cb_plane: bytes, cr_plane: bytes) -> memoryview:
        """Reorder planes into per-macroblock 384-byte PCM records (16x16 Y, 8x8 Cb, 8x8 Cr)."""
        mbw = self.mb_width
        mb_rows = len(y_plane) // (mbw * 256)
        out = bytearray(mbw * mb_rows * _MB_BYTES)
        dst = memoryview(out).cast("Q")
        luma = memoryview(y_plane).cast("Q")  # a luma row is 2 * mbw groups of 8 samples
        chroma = (memoryview(cb_plane).cast("Q"), memoryview(cr_plane).cast("Q"))
        per_mb = _MB_BYTES // 8
        span = per_mb * mbw
        for my in range(mb_rows):
            base = my * span
            for r in range(16):
                src = (my * 16 + r) * 2 * mbw
                for half in (0, 1):
                    at = base + r * 2 + half
                    dst[at : at + span : per_mb] = luma[src + half : src + 2 * mbw : 2]
            for c, plane in enumerate(chroma):
                for r in range(8):
                    src = (my * 8 + r) * mbw
                    at = base + 32 + c * 8 + r
                    dst[at : at + span : per_mb] = plane[src : src + mbw]
        return memoryview(out)

    def encode_chunks(self, frame: Frame) -> tuple[int, Iterator[bytes]]:
        """One IDR access unit as (NAL unit size, its bytes in pieces).

        The size is known before any sample is converted, so a muxer can write
        the length prefix and stream the pieces without holding the picture.
        Consume the pieces before encoding the next frame.
        """
        if frame.width != self.source_width or frame.height != self.source_height:
            raise ValueError(
                f"all frames must be {self.source_width}x{self.source_height}, "
                f"got {frame.width}x{frame.height}"
            )
        # Consecutive IDR pictures must differ in idr_pic_id.
        head = _nal(_NAL_IDR, self._slice_head(self._frames % 2))
        self._frames += 1
        mbs = self.mb_width * self.mb_height
        # Samples are >= 16 and each later mb_type is 0D 00, so emulation
        # prevention can only ever touch the header: the size is exact.
        size = len(head) + mbs * _MB_BYTES + (mbs - 1) * len(_MB_PREFIX) + 1
        return size, self._chunks(frame, head)

    def _chunks(self, frame: Frame, head: bytes) -> Iterator[bytes]:
        yield head
        step = self._band_mb_rows
        for first in range(0, self.mb_height, step):
            rows = min(step, self.mb_height - first)
            mbs = self._macroblocks(*self._yuv(self._band_rgb(frame, first * 16, rows * 16)))
            if first:
                yield _MB_PREFIX
            yield _MB_PREFIX.join([mbs[i : i + _MB_BYTES] for i in range(0, len(mbs), _MB_BYTES)])
        yield b"\x80"  # rbsp_stop_one_bit and alignment

    def encode(self, frame: Frame) -> bytes:
        """One IDR access unit: a single slice NAL unit (no start code, no length)."""
        size, chunks = self.encode_chunks(frame)
        unit = b"".join(chunks)
        assert len(unit) == size, "slice size prediction is wrong"
        return unit


class _BandConstants:
    """Per-band-size lane constants and scratch space, built once per encoder."""

    def __init__(self, pixels: int) -> None:
        # Rounding (+0.5) and the +16 / +128 offsets, one copy per lane.
        self.luma_bias = _repeat(128 + (16 << 8), 2, pixels)
        self.chroma_bias = _repeat(((128 << 10) + 512) << 6, 4, pixels // 2)
        self.even_lanes = _repeat(0xFFFF, 4, pixels // 2)
        self.scratch = bytearray(pixels * 2)
