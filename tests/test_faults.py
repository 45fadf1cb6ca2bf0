"""Faults and hostile input (issue 14): pickles that would run code, damaged images, disk full,
symlinked dataset folders, batch-invariant annotation. CLI-level faults are in tests/test_cli.py."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from unihope.hand.convert import load_mano_pickle


# ----------------------------------------------------------------------------------------------
# 1. MANO pickles that would run code
# ----------------------------------------------------------------------------------------------


def _exploit_pickle(module: str, name: str, code_or_arg: str, marker: Path) -> bytes:
    """A protocol-0 pickle calling `module.name(<text>, {})`; the text, when run, creates `marker`."""
    text = code_or_arg.format(marker=str(marker))
    return f"c{module}\n{name}\n(V{text}\n(dtR.".encode()


@pytest.mark.parametrize(
    ("module", "name", "code"),
    [
        # numpy.testing's runstring exec()s its first argument: allowed by a "numpy.*" rule
        ("numpy.testing._private.utils", "runstring", "open({marker!r}, 'w').close()"),
        # builtins are partly allowed (set, slice, ...); eval must not be among them
        ("builtins", "eval", "open({marker!r}, 'w').close()"),
        ("__builtin__", "exec", "open({marker!r}, 'w').close()"),
    ],
)
def test_mano_pickle_naming_code_is_refused_before_running(tmp_path: Path, module: str, name: str, code: str) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "MANO_RIGHT.pkl"
    evil.write_bytes(_exploit_pickle(module, name, code, marker))
    # the payload really runs code under a plain unpickler (so the test would catch a lax allow-list)
    if module.startswith("numpy"):
        pickle.loads(evil.read_bytes())
        assert marker.exists()
        marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match=rf"refusing to load {module}\.{name} from a MANO pickle"):
        load_mano_pickle(evil)
    assert not marker.exists()


def test_mano_converter_cli_refuses_exploit_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from unihope.cli import app

    marker = tmp_path / "pwned"
    evil = tmp_path / "MANO_RIGHT.pkl"
    evil.write_bytes(_exploit_pickle("numpy.testing._private.utils", "runstring", "open({marker!r}, 'w').close()", marker))
    result = CliRunner().invoke(app, ["convert-mano", str(evil), str(tmp_path / "out.pkl")])
    assert result.exit_code == 2
    assert "refusing to load numpy.testing._private.utils.runstring" in result.output
    assert "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "out.pkl").exists()
    result = CliRunner().invoke(app, ["inspect", "--mano-dir", str(tmp_path)])
    assert result.exit_code == 2 and "refusing to load numpy.testing._private.utils.runstring" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not marker.exists()


# ----------------------------------------------------------------------------------------------
# 4 + 5. Interrupts and one build per output (real `unihope build` processes)
# ----------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
PROCESS_EXIT_WAIT_S = 60  # hang guards only: a build that retries a dead API waits 207 s


def _marked_processes(mark: str) -> list[int]:
    """Pids of live processes whose environment carries UNIHOPE_TEST_MARK=mark (the build and its descendants)."""
    import os

    needle = f"UNIHOPE_TEST_MARK={mark}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != "Z":
            pids.append(int(name))
    return pids


def _wait_until_gone(mark: str) -> list[int]:
    import time

    for _ in range(100):
        left = _marked_processes(mark)
        if not left:
            return []
        time.sleep(0.1)
    return _marked_processes(mark)


def _build_env(tmp_path: Path, mark: str, **extra: str) -> dict[str, str]:
    from conftest import build_subprocess_env

    return build_subprocess_env(tmp_path, UNIHOPE_TEST_MARK=mark, **extra)  # the mark finds its processes


def test_ctrl_c_stops_a_build_cleanly_and_a_second_build_of_its_output_is_refused(synthetic_dexycb, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid

    import yaml

    # 1. A build parked in a ten-minute retry delay (pack:0 fails once). Prefect joins that task thread on
    #    its way out, so only the CLI's stop deadline (STOP_GRACE_S) makes the Ctrl-C below end the build.
    config_path = tmp_path / "build.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "interrupt-test",
        "source": {"kind": "dexycb", "root": str(synthetic_dexycb), "max_frames": 8},
        "crop": {"size_px": 64}, "deocclusion": {"backend": "render"}, "storage": {"shard_size": 4},
        "flow": {"frames_per_task": 4, "retries": 2, "retry_delay_s": 600.0},  # parked in the retry delay for the whole test
    }))
    out = tmp_path / "data"
    command = [sys.executable, "-m", "unihope.cli", "build", "--config", str(config_path), "--out", str(out)]
    mark = uuid.uuid4().hex
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        first = subprocess.Popen(command, cwd=REPO, env=_build_env(tmp_path, mark, UNIHOPE_FAIL_ONCE="pack:0"),
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "injected failure of pack[0]" not in log_path.read_text():
            assert first.poll() is None, f"build exited early:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"build never reached pack:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        assert len(_marked_processes(mark)) >= 2  # the build and its API server

        # 2. A second build of the same output is refused in plain words, naming the holder.
        second = subprocess.run(command, cwd=REPO, env=_build_env(tmp_path, uuid.uuid4().hex), capture_output=True,
                                text=True, timeout=PROCESS_EXIT_WAIT_S * 3)
        assert second.returncode == 3, second.stdout[-2000:] + second.stderr[-2000:]
        assert f"is being written by another build (pid {first.pid} on " in second.stderr
        assert "--wait-lock" in second.stderr and "Traceback" not in second.stderr
        assert "Starting temporary server" not in second.stdout + second.stderr
        assert first.poll() is None  # the first one is untouched

        # 3. Ctrl-C: SIGINT to the build's whole process group, as a terminal sends it.
        os.killpg(first.pid, signal.SIGINT)
        first.wait(timeout=PROCESS_EXIT_WAIT_S)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    text = log_path.read_text()
    assert first.returncode == 130, text[-3000:]
    assert "build interrupted: stopped; run the same command again to resume" in text
    assert "Finished in state Running()" not in text and "Traceback" not in text
    assert _wait_until_gone(mark) == [], "a process of the interrupted build outlived it"

    # 4. The lock went with the build: this process can take it at once.
    from unihope.storage.lock import build_lock

    with build_lock(str(out)) as holder:
        assert holder.pid == os.getpid()


_HOLD_LOCK_AND_SERVER = """
import sys, time
from unihope.prefect_server import start_owned_api_server
from unihope.storage.lock import build_lock
with build_lock(sys.argv[1]):
    server = start_owned_api_server()
    print("ready", server.server_process.pid, flush=True)
    time.sleep(600)
"""


def test_sigkill_of_a_build_leaves_no_server_and_a_stale_lock_is_taken_over(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import uuid

    from unihope.storage.lock import LOCK_NAME, build_lock

    out = tmp_path / "data"
    mark = uuid.uuid4().hex
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK_AND_SERVER, str(out)], cwd=REPO,
                              env=_build_env(tmp_path, mark), stdout=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline()
        assert line.startswith("ready"), line
        assert len(_marked_processes(mark)) == 2
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _wait_until_gone(mark) == [], "the API server outlived its SIGKILLed build"
    # the lock file still names the dead build, but its flock died with it: stale, taken over at once
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    from unihope.storage.lock import output_busy

    assert output_busy(str(out)) is None  # the CLI's question sees the dead holder as gone too
    with build_lock(str(out)) as mine:
        assert mine.pid == os.getpid()
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert f"pid {os.getpid()}" in str(output_busy(str(out)))


def test_remote_lock_refuses_a_live_holder_and_takes_over_a_stale_one() -> None:
    import json
    import os
    import socket
    import uuid

    import fsspec

    from unihope.storage.lock import (LOCK_NAME, REMOTE_STALE_AFTER_S, LockHolder, OutputBusyError, build_lock, is_stale,
                                      output_busy)

    out = f"memory://lock-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    lock_path = f"{out.removeprefix('memory://')}/{LOCK_NAME}"
    # another live process on this host (the parent of this one) holds it: refused, holder named
    live = LockHolder(os.getppid(), socket.gethostname(), "2026-01-01T00:00:00Z", "t-live")
    fs.pipe_file(lock_path, json.dumps(live.to_json()).encode())
    assert f"pid {os.getppid()} on {socket.gethostname()}" in str(output_busy(out))  # the CLI's question
    with pytest.raises(OutputBusyError, match=rf"pid {os.getppid()} on {socket.gethostname()}"):
        with build_lock(out):
            pass
    # a dead pid on this host, or an old heartbeat from another host: stale, taken over
    dead = LockHolder(2**22 + 12345, socket.gethostname(), "2026-01-01T00:00:00Z", "t-dead")
    far = LockHolder(1, "another-host", "2026-01-01T00:00:00Z", "t-far", heartbeat_utc="2026-01-01T00:00:00Z")
    assert is_stale(dead) and is_stale(far)
    assert not is_stale(far, now_s=1767225600.0 + REMOTE_STALE_AFTER_S / 2)  # a fresh heartbeat elsewhere
    for stale in (dead, far):
        fs.pipe_file(lock_path, json.dumps(stale.to_json()).encode())
        assert output_busy(out) is None  # a stale holder does not make the output busy
        with build_lock(out) as mine:
            assert LockHolder.from_bytes(fs.cat_file(lock_path)).token == mine.token
            assert output_busy(out) is not None
            with pytest.raises(OutputBusyError):  # one holder: no re-entry, even from this process
                with build_lock(out):
                    pass
        assert not fs.exists(lock_path)  # released


# ----------------------------------------------------------------------------------------------
# 7. Disk full
# ----------------------------------------------------------------------------------------------

FREE_BYTES_LEFT = 96 * 1024  # room for the index and grasp labels, not for an annotated batch

# Used only where this machine may not mount a tmpfs: the same ENOSPC the kernel gives, raised by the
# atomic writer for the annotated batches.
_CLI_WITH_SIMULATED_FULL_DISK = """
import errno, os, sys
import unihope.storage.io
real_open = open
def full_disk_open(path, mode="r", *args, **kwargs):
    if "w" in mode and "/_work/annotate-" in str(path):
        handle = real_open(path, mode, *args, **kwargs)
        def write(payload):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        handle.write = write
        return handle
    return real_open(path, mode, *args, **kwargs)
unihope.storage.io.open = full_disk_open
from unihope.cli import app
sys.argv[0] = "unihope"
app()
"""


@pytest.fixture()
def full_filesystem(tmp_path: Path):
    """(folder, is_real): a 2 MB tmpfs filled up to FREE_BYTES_LEFT when mounting is allowed, else a plain folder."""
    import subprocess

    folder = tmp_path / "small-disk"
    folder.mkdir()
    is_real = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    try:
        if is_real:
            import os

            stats = os.statvfs(folder)
            (folder / "filler").write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - FREE_BYTES_LEFT))
        yield folder, is_real
    finally:
        if is_real:
            subprocess.run(["umount", str(folder)], check=True)


def _temp_leftovers(root: Path) -> list[str]:
    from unihope.storage.io import TEMP_NAME_PATTERN

    return [str(path) for path in root.rglob("*") if TEMP_NAME_PATTERN.match(path.name)]


def test_full_disk_fails_the_build_at_once_with_one_clear_line_and_no_temp_files(synthetic_dexycb, tmp_path,
                                                                                full_filesystem):
    import subprocess
    import sys
    import uuid

    import yaml

    folder, is_real = full_filesystem
    config_path = tmp_path / "build.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "full-disk-test",
        "source": {"kind": "dexycb", "root": str(synthetic_dexycb), "max_frames": 8},
        "crop": {"size_px": 64}, "deocclusion": {"backend": "render"}, "storage": {"shard_size": 4},
        "flow": {"frames_per_task": 4, "retries": 2, "retry_delay_s": 30.0},  # a retry would wait 30 s
    }))
    out = folder / "data"
    args = ["build", "--config", str(config_path), "--out", str(out)]
    command = ([sys.executable, "-m", "unihope.cli", *args] if is_real
               else [sys.executable, "-c", _CLI_WITH_SIMULATED_FULL_DISK, *args])
    result = subprocess.run(command, cwd=REPO, env=_build_env(tmp_path, uuid.uuid4().hex), capture_output=True,
                            text=True, timeout=PROCESS_EXIT_WAIT_S * 4)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text[-3000:]
    assert ("build failed: no space left on the device: free space (df -h) and run the same command again; "
            "finished batches are kept, the rerun resumes") in result.stderr
    assert "Traceback" not in text
    assert "AwaitingRetry" not in text and "Retrying" not in text  # failed at once, not retried as transient
    assert "Task run encountered an exception OSError: [Errno 28]" in text
    assert _temp_leftovers(out) == []
    assert not (out / "manifest.json").exists()


def test_atomic_write_on_a_full_disk_leaves_no_temp_file_and_the_next_run_sweeps_old_ones(full_filesystem,
                                                                                         monkeypatch):
    import errno
    import os

    import unihope.storage.io
    from unihope.storage.io import sweep_temp_files, write_file_atomic

    folder, is_real = full_filesystem
    target = folder / "work" / "batch-0000.npz"
    if not is_real:
        def full_fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(unihope.storage.io.os, "fsync", full_fsync)
    with pytest.raises(OSError) as caught:
        write_file_atomic(target, b"x" * (4 * FREE_BYTES_LEFT))
    assert caught.value.errno == errno.ENOSPC
    assert not target.exists() and _temp_leftovers(folder) == []
    monkeypatch.undo()

    # what a SIGKILLed writer leaves: a temp file, an uncommitted shard folder; real files stay
    (folder / "work" / ".batch-0001.npz.tmp-0123abcd").write_bytes(b"half")
    (folder / "data" / "shards" / "shard-00002.incomplete-0123456789ab").mkdir(parents=True)
    (folder / "data" / "shards" / "shard-00002.incomplete-0123456789ab" / "zarr.json").write_text("{}")
    (folder / "data" / "shards" / "shard-00001.0123456789ab").mkdir()
    (folder / "work" / "batch-0002.npz").write_bytes(b"done")
    removed = sweep_temp_files(folder)
    assert len(removed) == 2 and _temp_leftovers(folder) == []
    assert (folder / "data" / "shards" / "shard-00001.0123456789ab").is_dir()
    assert (folder / "work" / "batch-0002.npz").read_bytes() == b"done"


def test_permanent_os_errors_are_not_retried() -> None:
    import errno

    from unihope.tasks.options import is_transient

    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        assert not is_transient(OSError(code, "x"))
    assert is_transient(OSError(errno.EIO, "x")) and is_transient(ConnectionResetError())


# ----------------------------------------------------------------------------------------------
# 2. Damaged and resized colour images
# ----------------------------------------------------------------------------------------------


def _damage_entropy_data(jpeg: bytes, num_bytes: int = 64) -> bytes:
    """Flip bits in the middle of the entropy-coded segment (between SOS and EOI), keeping every marker."""
    data = bytearray(jpeg)
    start_of_scan = data.index(b"\xff\xda")
    middle = (start_of_scan + len(data) - 2) // 2
    for idx in range(middle, middle + num_bytes):
        flipped = data[idx] ^ 0x5A
        data[idx] = 0x00 if flipped == 0xFF or data[idx] == 0xFF else flipped  # never create or break a marker
    return bytes(data)


def test_jpeg_with_damaged_entropy_data_is_a_corrupt_file_not_a_crop(synthetic_dexycb: Path, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    from unihope.storage.schema import SkipReason
    from unihope.image_check import ImageDecodeError, read_color_image_bgr
    from unihope.render.annotate import read_crop_image

    # 1. A real JPEG written by cv2 (a synthetic DexYCB colour frame), damaged in its entropy data.
    original_path = next(synthetic_dexycb.rglob("color_000005.jpg"))
    damaged_path = tmp_path / "color_000005.jpg"
    damaged_path.write_bytes(_damage_entropy_data(original_path.read_bytes()))
    original = cv2.imread(str(original_path))
    silently_decoded = cv2.imread(str(damaged_path))
    # the bug: OpenCV returns an image (libjpeg only warns on stderr), and it is not the original
    assert silently_decoded is not None and silently_decoded.shape == original.shape
    assert np.any(np.abs(silently_decoded.astype(int) - original.astype(int)) > 30)

    # 2. The strict reader refuses it; the clean file still reads exactly as cv2 reads it.
    with pytest.raises(ImageDecodeError, match="damaged JPEG data .*Corrupt JPEG data"):
        read_color_image_bgr(damaged_path)
    np.testing.assert_array_equal(read_color_image_bgr(original_path), original)

    # 3. The annotate stage turns it into a CORRUPT_FILE skip instead of a garbage crop.
    height_px, width_px = original.shape[:2]
    affine = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])
    reason, detail = read_crop_image(str(damaged_path), affine, 64, (width_px, height_px))
    assert reason == SkipReason.CORRUPT_FILE and "damaged JPEG data" in detail
    crop = read_crop_image(str(original_path), affine, 64, (width_px, height_px))
    assert isinstance(crop, np.ndarray) and crop.shape == (64, 64, 3)


def test_colour_image_at_another_resolution_is_skipped_as_wrong_resolution(synthetic_dexycb: Path,
                                                                           synthetic_ho3d: Path, tmp_path: Path) -> None:
    import shutil

    import cv2

    from unihope.storage.schema import FrameRecord, Skip, SkipReason
    from unihope.sources.dexycb import DexYCBSource
    from unihope.sources.ho3d import HO3DSource

    # 1. DexYCB: one frame upscaled to 1280x960, one downscaled to 320x240 (the camera is 640x480).
    root = tmp_path / "dexycb"
    shutil.copytree(synthetic_dexycb, root, ignore=shutil.ignore_patterns("truth"))
    source = DexYCBSource(root, "all")
    refs = source.index()[:4]
    resized = {refs[1].sample_key: (1280, 960), refs[2].sample_key: (320, 240)}
    for ref in refs[1:3]:
        path = root / ref.sequence_key / ref.serial / f"color_{ref.frame_idx:06d}.jpg"
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), resized[ref.sample_key]))
    results = source.load(refs)
    for ref, result in zip(refs, results):
        if ref.sample_key in resized:
            width_px, height_px = resized[ref.sample_key]
            assert isinstance(result, Skip) and result.reason == SkipReason.WRONG_RESOLUTION, result
            assert f"colour image is {width_px}x{height_px} px, the camera's (depth) is 640x480 px" in result.detail
        else:
            assert isinstance(result, FrameRecord) and result.image_size_wh == (640, 480)

    # 2. HO3D: the same rule.
    ho3d_root = tmp_path / "ho3d"
    shutil.copytree(synthetic_ho3d, ho3d_root, ignore=shutil.ignore_patterns("truth"))
    ho3d = HO3DSource(ho3d_root, "train")
    ref = ho3d.index()[0]
    folder, seq = ref.sequence_key.split("/")
    image_path = next((ho3d_root / folder / seq / "rgb").glob(f"{ref.frame_idx:04d}.*"))
    cv2.imwrite(str(image_path), cv2.resize(cv2.imread(str(image_path)), (320, 240)))
    (result,) = ho3d.load([ref])
    assert isinstance(result, Skip) and result.reason == SkipReason.WRONG_RESOLUTION


# ----------------------------------------------------------------------------------------------
# 8. Symlinked HO3D folders
# ----------------------------------------------------------------------------------------------


def test_symlinked_ho3d_folder_leaving_the_root_skips_its_frames_and_keeps_the_rest(synthetic_ho3d: Path,
                                                                                   tmp_path: Path) -> None:
    import shutil

    from unihope.storage.schema import FrameRecord, Skip, SkipReason
    from unihope.sources.ho3d import HO3DSource

    root = tmp_path / "ho3d"
    shutil.copytree(synthetic_ho3d, root, ignore=shutil.ignore_patterns("truth"))
    sequences = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    # 1. one sequence's meta folder moved out of the dataset and symlinked back (the case)
    outside = tmp_path / "elsewhere" / "meta"
    outside.parent.mkdir()
    shutil.move(root / "train" / sequences[0] / "meta", outside)
    (root / "train" / sequences[0] / "meta").symlink_to(outside, target_is_directory=True)
    # 2. another sequence's meta folder symlinked to a copy inside the root: followed, stays in the root
    inside = root / "copies" / "meta"
    inside.parent.mkdir()
    shutil.move(root / "train" / sequences[1] / "meta", inside)
    (root / "train" / sequences[1] / "meta").symlink_to(inside, target_is_directory=True)

    source = HO3DSource(root, "train")
    results = source.load(source.index())
    assert results
    for result in results:
        if f"/{sequences[0]}/" in result.sample_key:
            assert isinstance(result, Skip) and result.reason == SkipReason.OUTSIDE_ROOT, result
            assert "lies outside the dataset root" in result.detail
        else:
            assert isinstance(result, FrameRecord), result
    assert any(f"/{sequences[1]}/" in r.sample_key for r in results)


# ----------------------------------------------------------------------------------------------
# 9. Determinism: a frame's output depends on the frame alone
# ----------------------------------------------------------------------------------------------

ANNOTATION_ARRAYS = ("image", "mask_hand", "mask_hand_visible", "mask_object", "hand_parts", "depth_hand",
                     "depth_scene", "finger_visibility", "joints_2d", "object_keypoints_2d", "seg_map", "dense_map",
                     "relative_depth_map")


def _annotation_bytes(result) -> dict:
    import numpy as np

    from unihope.storage.schema import AnnotatedFrame

    assert isinstance(result, AnnotatedFrame), result
    out = {name: np.asarray(getattr(result, name)).tobytes() for name in ANNOTATION_ARRAYS}
    out["scalars"] = repr((result.visibility, result.occlusion_bin, result.crop.affine.tobytes()))
    return out


def test_annotation_and_deocclusion_do_not_depend_on_batching_order_or_torch_threads(synthetic_dexycb: Path) -> None:
    import torch

    from unihope.config import CropConfig, DeocclusionConfig, GraspConfig, HandModelConfig, RenderConfig, SourceConfig
    from unihope.deocclude import build_deoccluder
    from unihope.grasp import label_grasps
    from unihope.render.annotate import AnnotationResources, annotate_frames
    from unihope.sources import open_source

    resources = AnnotationResources()
    hand_cfg = HandModelConfig()
    source = open_source(SourceConfig(kind="dexycb", root=synthetic_dexycb), hand_cfg)
    refs = source.index()
    frames = source.load(refs[:6] + refs[-6:])  # both hand sides
    grasps = label_grasps(frames, GraspConfig())
    crop_cfg, render_cfg = CropConfig(size_px=64), RenderConfig()

    def annotate(groups: list[list[int]], threads: int) -> dict[str, dict]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = {}
            for group in groups:
                results = annotate_frames([frames[i] for i in group], [grasps[i] for i in group], crop_cfg,
                                          render_cfg, hand_cfg, resources=resources)
                out.update({frames[i].sample_key: result for i, result in zip(group, results)})
            return out
        finally:
            torch.set_num_threads(before)

    num = len(frames)
    reference = annotate([list(range(num))], threads=1)
    variants = {
        "pairs": annotate([[i, i + 1] for i in range(0, num, 2)], threads=1),
        "reversed, uneven": annotate([list(range(num - 1, 6, -1)), [3, 1], [6, 5, 4, 2, 0]], threads=1),
        "two torch threads": annotate([list(range(num))], threads=2),
    }
    expected = {key: _annotation_bytes(result) for key, result in reference.items()}
    for name, results in variants.items():
        for key, result in results.items():
            assert _annotation_bytes(result) == expected[key], f"{key} differs when annotated as {name}"

    # De-occlusion (the render backend): per-frame outputs equal in any batch size.
    annotated = [reference[frame.sample_key] for frame in frames]
    whole = build_deoccluder(DeocclusionConfig(backend="render", batch_size=len(annotated))).run(annotated)
    small = build_deoccluder(DeocclusionConfig(backend="render", batch_size=3)).run(annotated[::-1])[::-1]
    for first, again in zip(whole, small):
        assert first.sample_key == again.sample_key and first.keep == again.keep
        assert first.image_deoccluded.tobytes() == again.image_deoccluded.tobytes(), first.sample_key
        assert repr((first.original_score, first.deocclusion_score, first.candidate_scores.tobytes())) == repr(
            (again.original_score, again.deocclusion_score, again.candidate_scores.tobytes()))


def _server_port(mark: str, cli_pid: int) -> int | None:
    """The port of the API server among the marked processes (its uvicorn command line names it)."""
    for pid in _marked_processes(mark):
        if pid == cli_pid:
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "--port" in args:
            return int(args[args.index("--port") + 1])
    return None


def _is_listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def shared_prefect_home(tmp_path_factory) -> Path:
    """One PREFECT_HOME for the kill tests: the server's database is migrated once."""
    return tmp_path_factory.mktemp("kill-tests")


@pytest.mark.parametrize("signum_name", ["SIGTERM", "SIGKILL"])
def test_killing_the_demo_mid_run_leaves_no_process_and_no_port(signum_name, shared_prefect_home, tmp_path):
    """`unihope demo` killed while it runs: every process it started ends (for SIGKILL by itself, through
    the parent-death signal or the watchdog on the parent pid) and the server's port is free."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid

    mark = uuid.uuid4().hex
    env = _build_env(shared_prefect_home, mark)
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        demo = subprocess.Popen([sys.executable, "-m", "unihope.cli", "demo", "--out", str(tmp_path / "demo")],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    port = None
    try:
        deadline = time.monotonic() + 240
        while port is None or not _is_listening(port):  # mid-run: its API server is up and serving
            assert demo.poll() is None, f"demo exited early:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no API server came up:\n{log_path.read_text()[-3000:]}"
            port = _server_port(mark, demo.pid)
            time.sleep(0.2)
        demo.send_signal(getattr(signal, signum_name))  # the demo alone, not its process group
        demo.wait(timeout=PROCESS_EXIT_WAIT_S)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode == -getattr(signal, signum_name)
    assert _wait_until_gone(mark) == [], f"processes of the killed demo outlived it:\n{log_path.read_text()[-2000:]}"
    assert not _is_listening(port)
