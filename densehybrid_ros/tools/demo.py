"""`make demo`: the trained DenseHybrid model end to end through ROS 2, scored against the sim's ground truth.

    densehybrid-demo [--out demo_out] [--weights W] [--frames 60] [--rate 4] [--size 512x256] [--seed 7] [--keep-going]

1. bag      a sim driving sequence with TEST-pool anomalies is written as a ROS 2 bag (`densehybrid-sim bag`:
            /camera/image_raw, /camera/camera_info, /camera/labels, /camera/depth, /sim/anomalies, /tf) at --rate Hz.
2. live     the perception node runs as its own process in namespace /demo (reliable input QoS, depth 10) with the
            camera mount (height, pitch, roll) read from the bag's /tf at the first frame; densehybrid-record records
            its ~/anomaly_score, ~/semantic, ~/obstacles and ~/overlay; densehybrid-replay plays the bag's images and
            CameraInfo to it over DDS in real time (an isolated domain: ROS_DOMAIN_ID = $ROS_DOMAIN_ID, else one
            derived from the pid; ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST; a Fast DDS profile with a shared-memory
            segment that holds the node's outputs, see `tools.harness.ros_environment`). Logs: OUT/logs/.
3. score    bag evaluation (`evaluation.bag_eval.evaluate_bag`, densehybrid-eval-bag's work) scores the recorded outputs
            (hybrid AP / FPR95 / AUROC, mIoU, open-mIoU, obstacle localisation from the recorded markers) and, offline
            (deterministic: the bag read directly, the same Predictor), the baselines (generative, discriminative,
            MSP, max-logit, entropy); their console text in OUT/logs/eval_live.log and eval_offline.log.
4. report   OUT/metrics.json, OUT/report.md (links eval-bag's reports with the PR/ROC curves), OUT/overlay.gif and
            OUT/overlay_frames/*.png from the recorded ~/overlay images; a summary table on stdout.

Default weights: models/densehybrid_sim.safetensors in the package's share directory. Exit status 0 on success, 1
when the live run fails (the node dies, no outputs arrive; with --keep-going the offline scoring and the report
are still written), 2 on bad arguments or missing / invalid weights.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from densehybrid_ros.cli_args import parse_size
from densehybrid_ros.node.dds import PROFILE_VARIABLES
from densehybrid_ros.perception.camera import Mount
from densehybrid_ros.tools.harness import Child, ToolError, Watcher, ros_environment, scoped_environ, wait_for
from densehybrid_ros.weights import file_sha256

if TYPE_CHECKING:
    from densehybrid_ros.evaluation.bag_eval import BagEvalConfig
    from densehybrid_ros.evaluation.obstacle_metric import ObstacleOptions
    from densehybrid_ros.weights import WeightsMetadata

NAMESPACE = "/demo"
NODE = f"{NAMESPACE}/densehybrid_perception"
OUTPUTS = ("anomaly_score", "semantic", "obstacles", "overlay")
BASELINES = ("hybrid", "generative", "discriminative", "msp", "max_logit", "entropy")
DEFAULT_WEIGHTS = Path("models") / "densehybrid_sim.safetensors"
SPEED_MPS = 8.0  # `densehybrid-sim bag` default
SPLIT = "test"  # the anomaly pool never seen in training
STARTUP_TIMEOUT_S = 120.0  # node (torch import, weights) and recorder until the recorder has subscribed
ANSWER_GRACE_S = 15.0  # after the replay ended, wait this long at most for the node's last answers
GIF_WIDTH = 320
GIF_MAX_BYTES = 3_000_000
PNG_FRAMES = 4




@dataclass(frozen=True)
class DemoConfig:
    out: Path
    weights: Path
    frames: int
    rate: float
    size: tuple[int, int]
    seed: int
    keep_going: bool

    @property
    def bag(self) -> Path:
        return self.out / "bag"

    @property
    def recorded(self) -> Path:
        return self.out / "recorded"

    @property
    def logs(self) -> Path:
        return self.out / "logs"


# ------------------------------------------------------------------ weights and the sim bag
def default_weights() -> Path:
    """The bundled weights: models/densehybrid_sim.safetensors in the package's share directory."""
    from densehybrid_ros.paths import share_dir

    try:
        return share_dir() / DEFAULT_WEIGHTS
    except FileNotFoundError:
        return DEFAULT_WEIGHTS


def check_weights(path: Path) -> WeightsMetadata:
    """The validated metadata of `path` (header only); ToolError (exit 2) when missing or not a weights file."""
    from densehybrid_ros.weights import WeightsError, read_metadata

    if not path.is_file():
        raise ToolError(f"weights file not found: {path} (train one, or pass --weights PATH to a densehybrid_ros "
                        f".safetensors file)", code=2)
    try:
        return read_metadata(path)
    except WeightsError as error:
        raise ToolError(f"invalid weights: {error}", code=2) from None


def write_sim_bag(config: DemoConfig) -> int:
    """The `densehybrid-sim bag` sequence (test pool, fixed seed) at config.size, written at config.rate Hz."""
    import dataclasses

    from densehybrid_ros.sim.bag import write_bag
    from densehybrid_ros.sim.frames import driving_sequence
    from densehybrid_ros.sim.world import SimConfig, SimWorld

    width, height = config.size
    with SimWorld(dataclasses.replace(SimConfig(), width=width, height=height)) as world:
        frames = driving_sequence(world, config.seed, SPLIT, config.frames, config.rate, SPEED_MPS)
        return write_bag(config.bag, frames, config.rate)


def first_frame_mount(bag: Path) -> tuple[Mount, str]:
    """The camera mount at the bag's first frame, from its /tf (the node's convention), as densehybrid-eval-bag reads
    it, and where it came from ("tf" | "tf_static")."""
    from densehybrid_ros.datasets.rosbag import open_bag

    dataset = open_bag(bag)
    try:
        extras = dataset[0].extras
    finally:
        dataset.close()
    if extras["mount"] is None:
        raise ToolError(f"{bag} has no base_footprint -> camera transform on /tf: no camera mount for the node")
    return extras["mount"], extras["mount_source"]


def bag_mount(bag: Path) -> Mount:
    """The camera mount at the bag's first frame (`first_frame_mount` without its source)."""
    return first_frame_mount(bag)[0]


def mount_record(mount: Mount, source: str) -> dict:
    """metrics.json's "mount": height, pitch, roll and where they came from."""
    return {"height": mount.height, "pitch": mount.pitch, "roll": mount.roll, "source": source}


# ------------------------------------------------------------------ the live run over DDS
def node_arguments(weights: Path, mount: Mount | None, namespace: str = NAMESPACE) -> list[str]:
    """The perception node in `namespace`: reliable input QoS (no frame lost in transport), markers until replaced,
    the bag's camera mount (None: the node's default mount)."""
    params = {"weights": str(weights), "qos_reliability": "reliable", "qos_depth": "10", "marker_lifetime": "0.0",
              "diagnostics_period": "0.5"}
    if mount is not None:
        params.update(camera_height=f"{mount.height:.9f}", camera_pitch=f"{mount.pitch:.9f}",
                      camera_roll=f"{mount.roll:.9f}")
    args = ["densehybrid_ros.node.perception_node", "--ros-args", "-r", f"__ns:={namespace}"]
    for name, value in params.items():
        args += ["-p", f"{name}:={value}"]
    return args


@dataclass
class LiveRun:
    node: dict = field(default_factory=dict)  # the node's diagnostics totals: received, processed, dropped, ...
    error: str | None = None
    timings_s: dict = field(default_factory=dict)


def run_live(config: DemoConfig, mount: Mount) -> LiveRun:
    """Node + recorder, then the replay; waits for the node's answers and stops everything (SIGINT, then kill).
    Problems end up in LiveRun.error (the recorded bag keeps whatever arrived)."""
    from densehybrid_ros.node.record import recorded_counts

    domain, env = ros_environment()
    topics = {name: f"{NODE}/{name}" for name in OUTPUTS}
    with scoped_environ({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", *PROFILE_VARIABLES) if k in env}):
        watcher = Watcher(domain, NODE)
    run, start = LiveRun(), time.monotonic()
    node = Child("node", node_arguments(config.weights, mount), config.logs, env)
    recorder = Child("record", ["densehybrid_ros.node.record", "--out", str(config.recorded), "--status-period", "0.2",
                                "--topics", *topics.values()], config.logs, env)
    replay = None

    def broken() -> str | None:
        for child in (node, recorder):
            if not child.alive():
                return child.died()
        if "configure failed" in node.log.read_text(errors="replace"):  # it stays alive, unconfigured
            return f"the perception node could not configure (log {node.log}):\n{node.tail()}"
        return None

    try:
        if not wait_for(lambda: all(watcher.subscribers(t) >= 1 for t in topics.values()), STARTUP_TIMEOUT_S, broken):
            raise ToolError(f"the recorder did not subscribe to the node's outputs within {STARTUP_TIMEOUT_S:.0f} s "
                            f"(logs in {config.logs}):\n{node.tail()}")
        run.timings_s["startup"] = time.monotonic() - start
        replay = Child("replay", ["densehybrid_ros.node.replay", str(config.bag), "--rate", "1.0",
                                  "--topics", "/camera/image_raw", "/camera/camera_info",
                                  "--wait-for-subscribers", "30",
                                  "--remap", f"/camera/image_raw:={NAMESPACE}/image",
                                  "--remap", f"/camera/camera_info:={NAMESPACE}/camera_info"], config.logs, env)
        start = time.monotonic()
        playing = config.frames / config.rate + 30.0 + ANSWER_GRACE_S
        if not wait_for(lambda: not replay.alive(), playing, broken):
            raise ToolError(f"the replay did not end within {playing:.0f} s:\n{replay.tail()}")
        if replay.proc.returncode != 0:
            raise ToolError(replay.died())
        wait_for(lambda: watcher.settled(config.frames), ANSWER_GRACE_S, broken)

        def recorded_everything() -> bool:  # one message per processed frame on every output
            counts = recorded_counts(recorder.log.read_text(errors="replace"))
            return all(counts.get(t, 0) >= watcher.totals["processed"] for t in topics.values())
        wait_for(recorded_everything, ANSWER_GRACE_S, broken)  # else eval-bag reports the missing outputs
        run.timings_s["replay"] = time.monotonic() - start
    except ToolError as error:
        run.error = str(error)
    finally:
        if replay is not None:
            replay.stop()
        if recorder.stop() != 0 and run.error is None:
            run.error = recorder.died()
        node_status = node.stop()
        run.node = dict(watcher.totals)
        watcher.close()
    if run.error is None and run.node["processed"] == 0:
        run.error = f"the node answered none of the {config.frames} frames (status {node_status}):\n{node.tail()}"
    return run


# ------------------------------------------------------------------ scoring (bag evaluation)
def score_bag(name: str, config: DemoConfig, evaluation: BagEvalConfig) -> dict:
    """`bag_eval.evaluate_bag` of `evaluation` (a BagEvalConfig) with its report in OUT/NAME and its console text in
    LOGS/NAME.log (as densehybrid-eval-bag prints it); its metrics.json."""
    from densehybrid_ros.datasets.base import DatasetError
    from densehybrid_ros.evaluation.bag_eval import evaluate_bag
    from densehybrid_ros.weights import WeightsError

    log = config.logs / f"{name}.log"
    try:
        result = evaluate_bag(evaluation)
        report = result.write(config.out / name)
    except (DatasetError, WeightsError, ValueError, OSError) as error:
        log.write_text(f"densehybrid-eval-bag: error: {error}\n")
        raise ToolError(f"densehybrid-eval-bag ({name}) failed: {error}") from None
    log.write_text(result.console(report) + "\n")
    return result.metrics


def node_mount_options(mount: Mount) -> ObstacleOptions:
    """Bag evaluation's obstacle options with the node's fixed camera mount (its defaults otherwise)."""
    from densehybrid_ros.evaluation.obstacle_metric import ObstacleOptions

    return ObstacleOptions(camera_height=mount.height, camera_pitch=mount.pitch, camera_roll=mount.roll)


def score_live(config: DemoConfig, mount: Mount) -> dict:
    """The recorded node outputs scored against the bag (obstacles from the recorded markers)."""
    from densehybrid_ros.evaluation.bag_eval import BagEvalConfig

    topics = {"score": f"{NODE}/anomaly_score", "semantic": f"{NODE}/semantic", "obstacles": f"{NODE}/obstacles"}
    return score_bag("eval_live", config, BagEvalConfig(bag=config.bag, outputs=config.recorded, weights=config.weights,
                                                         output_topics=topics, obstacles=node_mount_options(mount)))


def score_offline(config: DemoConfig, mount: Mount) -> dict:
    """The Predictor on the bag read directly, with every baseline score; the node's mount for the obstacles."""
    from densehybrid_ros.evaluation.bag_eval import BagEvalConfig

    return score_bag("eval_offline", config, BagEvalConfig(bag=config.bag, weights=config.weights, scores=BASELINES,
                                                           obstacles=node_mount_options(mount)))


def anomaly_entry(metrics: dict) -> dict:
    """score -> {ap, fpr95, auroc} (None where the frames had no anomaly pixel)."""
    out = {}
    for name, entry in metrics["scores"].items():
        a = entry.get("anomaly") or {}
        out[name] = {key: a.get(key) for key in ("ap", "fpr95", "auroc")}
    return out


def obstacles_entry(obstacles: dict) -> dict:
    """eval-bag's obstacle localisation without the per-match rows."""
    keys = ("options", "threshold", "frames", "candidates", "predicted", "matched", "eligible", "detected",
            "detection_rate", "false_obstacles", "false_obstacles_per_frame", "distance_error", "detection_by_distance",
            "frames_skipped", "mount_sources")
    return {key: obstacles.get(key) for key in keys}


def metrics_entry(metrics: dict, report: Path) -> dict:
    """The demo's view of one eval-bag metrics.json."""
    return {"frames": metrics["dataset"]["images"], "scores": anomaly_entry(metrics),
            "closed_set": {"miou": metrics.get("closed_set", {}).get("miou")},
            "open_set": {key: metrics.get("open_set", {}).get(key) for key in ("open_miou", "mean_f1", "threshold")},
            "obstacles": obstacles_entry(metrics["obstacles"]), "report": str(report)}


# ------------------------------------------------------------------ overlay animation
def recorded_overlays(recorded: Path) -> list:
    """The recorded ~/overlay images (RGB, in stamp order)."""
    from densehybrid_ros.datasets.rosbag import StampIndexedBag
    from densehybrid_ros.perception.image_codec import decode_image_msg

    topic = f"{NODE}/overlay"
    bag = StampIndexedBag(recorded, [topic])
    try:
        if topic not in bag.topics:
            return []
        return [decode_image_msg(bag.read(topic, stamp)) for stamp in sorted(bag.topics[topic].index)]
    finally:
        bag.close()


def write_overlays(images: list, out: Path, rate: float) -> dict:
    """OUT/overlay.gif (downscaled until under GIF_MAX_BYTES, one frame per 1/rate s) and a few full-size PNGs."""
    from PIL import Image

    if not images:
        return {"gif": None, "gif_frames": 0, "png": []}
    frames_dir = out / "overlay_frames"
    frames_dir.mkdir(exist_ok=True)
    picks = sorted({round(i * (len(images) - 1) / max(PNG_FRAMES - 1, 1)) for i in range(PNG_FRAMES)})
    pngs = []
    for i in picks:
        path = frames_dir / f"overlay_{i:03d}.png"
        Image.fromarray(images[i]).save(path)
        pngs.append(str(path.relative_to(out)))
    gif, width = out / "overlay.gif", min(GIF_WIDTH, images[0].shape[1])
    while True:
        height = max(1, round(images[0].shape[0] * width / images[0].shape[1]))
        frames = [Image.fromarray(im).resize((width, height), Image.BILINEAR).quantize(colors=128) for im in images]
        frames[0].save(gif, save_all=True, append_images=frames[1:], duration=round(1000 / rate), loop=0,
                       optimize=True)
        if gif.stat().st_size <= GIF_MAX_BYTES or width <= 64:
            break
        width = width * 3 // 4
    return {"gif": gif.name, "gif_frames": len(frames), "gif_size": [width, height], "png": pngs}


# ------------------------------------------------------------------ summary table and report
def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def score_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per score AP / FPR95 / AUROC (percent) of the live node and offline."""
    live = summary["live"].get("scores", {})
    offline = summary["offline"]["scores"]
    header = ["score", "live AP", "live FPR95", "live AUROC", "offline AP", "offline FPR95", "offline AUROC"]
    rows = []
    for name in offline:
        cells = [name]
        for source in (live.get(name), offline[name]):
            cells += [_pct(source[k]) if source else "-" for k in ("ap", "fpr95", "auroc")]
        rows.append(cells)
    return header, rows


NEAR_DETECTION_M = 30.0  # the range whose detection rate the demo states on its own line (bins' upper edges)


def near_detection(obstacles: dict, within: float = NEAR_DETECTION_M) -> str:
    """'rate (detected/eligible)' over the distance bins that end at or before `within` metres."""
    bins = [b for b in obstacles.get("detection_by_distance") or []
            if b["upper"] is not None and b["upper"] <= within]
    eligible = sum(b["eligible"] for b in bins)
    detected = sum(b["detected"] for b in bins)
    return f"{detected / eligible:.3f} ({detected}/{eligible})" if eligible else "-"


def result_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): segmentation and obstacle localisation, live vs offline."""
    sources = [summary["live"] if "scores" in summary["live"] else None, summary["offline"]]

    def row(label: str, get: Callable[[dict], str]) -> list[str]:
        return [label, *(get(s) if s else "-" for s in sources)]

    def err(key: str, fmt: str) -> Callable[[dict], str]:
        return lambda s: _num(s["obstacles"]["distance_error"][key], fmt)

    rows = [
        row("mIoU [%]", lambda s: _pct(s["closed_set"]["miou"])),
        row("open-mIoU [%]", lambda s: _pct(s["open_set"]["open_miou"])),
        row("frames scored", lambda s: str(s["frames"])),
        row("obstacle detection rate", lambda s: f"{_num(s['obstacles']['detection_rate'], '{:.3f}')} "
                                                 f"({s['obstacles']['detected']}/{s['obstacles']['eligible']})"),
        row(f"detection within {NEAR_DETECTION_M:g} m", lambda s: near_detection(s["obstacles"])),
        row("distance error median / mean [m]",
            lambda s: f"{err('median_abs_m', '{:.2f}')(s)} / {err('mean_abs_m', '{:.2f}')(s)}"),
        row("relative distance error median / mean",
            lambda s: f"{err('median_rel', '{:.3f}')(s)} / {err('mean_rel', '{:.3f}')(s)}"),
        row("false obstacles per frame", lambda s: _num(s["obstacles"]["false_obstacles_per_frame"])),
    ]
    return ["", "live node", "offline"], rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), *(line(r) for r in rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _instant_words(options: dict) -> str:
    """The instant confirmation in force (obstacle metric options), in words: '' when off."""
    score = options.get("instant_score")
    if score is None:
        return ""
    return f"; at once when its highest score reaches {options['node']['instant_confirm_point']}, {score:.3f}"


def write_report(summary: dict, out: Path) -> Path:
    """OUT/report.md: the setup, both tables, the overlay animation and frames, links to eval-bag's reports."""
    bag, mount, live = summary["bag"], summary["mount"], summary["live"]
    o = summary["offline"]["obstacles"]["options"]
    n = o["node"]
    lines = ["# densehybrid_ros demo", "",
             f"Weights `{summary['weights']}` (sha256 `{summary['weights_sha256'][:16]}...`, threshold "
             f"{_num(summary['offline']['open_set']['threshold'], '{:.4g}')}). Sim bag: {bag['frames']} frames "
             f"{bag['size'][0]}x{bag['size'][1]} at {bag['rate']:g} Hz, seed {bag['seed']}, {bag['split']}-pool "
             f"anomalies; camera mount from /tf: height {mount['height']:.3f} m, pitch {mount['pitch']:.4f} rad, "
             f"roll {mount['roll']:.4f} rad.", "",
             "**live node**: the bag replayed over DDS to the perception node (its own process), its outputs recorded "
             "and scored by `densehybrid-eval-bag --outputs` (obstacles from the recorded ~/obstacles markers). "
             "**offline**: `densehybrid-eval-bag` running the same Predictor on the bag read directly "
             "(deterministic). Pixel metrics are pooled over all frames, in percent.", ""]
    if live.get("error"):
        lines += [f"**The live run failed**: `{live['error'].splitlines()[0]}` (logs in `logs/`).", ""]
    if "scores" in live:
        node = live.get("node", {})
        lines += [f"Live: the node processed {node.get('processed', 0)} of {bag['frames']} frames "
                  f"({node.get('dropped', 0)} dropped); {live['scored_frames']} frames had recorded outputs and were "
                  f"scored ({live['missing_outputs']} missing).", ""]
    lines += ["## Anomaly segmentation", "", markdown_table(*score_rows(summary)), "",
              "## Segmentation and obstacle localisation", "", markdown_table(*result_rows(summary)), "",
              f"Obstacles: anomaly components of at least {o['min_area']} px whose ground contact is on "
              f"{' or '.join(n['drivable_classes'])} (or in the bottom {n['ground_band']:g} of the image), placed "
              f"on the ground plane with the camera mount, {n['obstacle_min_width']:g}-{n['obstacle_max_width']:g} m "
              "wide and "
              f"{n['obstacle_min_height']:g}-{n['obstacle_max_height']:g} m tall with at least "
              f"{n['obstacle_min_visible_area']:g} m^2 visible, not mostly surrounded by "
              f"{', '.join(n['object_classes'])} (at most {n['max_enclosed_share']:g} of the pixels around it), "
              "published once seen in "
              f"{n['confirm_hits']} of the last {n['confirm_window']} frames (a new obstacle {n['confirm_hits'] - 1} "
              f"frame(s) late{_instant_words(o)}) and tracked through {n['miss_budget']} missed frames (last views "
              f"{'published' if n.get('hold_missed_obstacles') else 'not published'}), as the node does them; "
              f"matched to the sim's true boxes (3-D centre distance gate {o['gate_m']:g} m + "
              f"{100 * o['gate_rel']:g}% of the true range); distance error = |predicted - true| range of the box "
              f"centre over the matched boxes; detection rate over the true boxes with at least {o['min_visible']} "
              f"visible pixels within {o['max_distance']:g} m. The live node gets the first CameraInfo after the first "
              "image, so it places no obstacle in frame 0.", "",
              "Full reports with PR / ROC curves, score histograms and examples: "
              + ", ".join(f"[{name}]({name}/report.md)" for name in ("eval_live", "eval_offline")
                          if (out / name / "report.md").is_file()), ""]
    overlays = summary.get("overlay", {})
    if overlays.get("gif"):
        lines += ["## The node's ~/overlay", "", f"![overlay]({overlays['gif']})", "",
                  *(f"![{Path(p).stem}]({p})" for p in overlays["png"]), ""]
    lines += ["## Timings [s]", "", markdown_table(["step", "seconds"],
                                                  [[k, f"{v:.1f}"] for k, v in summary["timings_s"].items()]), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# ------------------------------------------------------------------ the run
def prepare_out(config: DemoConfig) -> None:
    """A fresh run in config.out: the demo's own products of an earlier run are removed."""
    config.out.mkdir(parents=True, exist_ok=True)
    for name in ("bag", "recorded", "eval_live", "eval_offline", "logs", "overlay_frames"):
        shutil.rmtree(config.out / name, ignore_errors=True)
    for name in ("metrics.json", "report.md", "overlay.gif"):
        (config.out / name).unlink(missing_ok=True)
    config.logs.mkdir()


def live_section(config: DemoConfig, mount: Mount, timings: dict) -> tuple[dict, str | None]:
    """The live run and the scoring of what it recorded: (the "live" entry of metrics.json, the failure or None).
    Without --keep-going a failure raises ToolError."""
    live_run = run_live(config, mount)
    timings.update({f"live_{k}": round(v, 2) for k, v in live_run.timings_s.items()})
    failure = live_run.error
    if failure and not config.keep_going:
        raise ToolError(f"live run failed: {failure}")
    live: dict = {"node": live_run.node}
    if failure:
        live["error"] = failure
        print(f"  live run failed (going on, --keep-going): {failure.splitlines()[0]}", flush=True)
    if live_run.node.get("processed") and config.recorded.exists():
        started = time.monotonic()
        try:
            metrics = score_live(config, mount)
        except ToolError as error:
            if not config.keep_going:
                raise
            failure = failure or str(error)
            live.setdefault("error", str(error))
        else:
            live.update(metrics_entry(metrics, config.out / "eval_live" / "report.md"))
            live.update({k: metrics["outputs"][k] for k in ("scored_frames", "missing_outputs", "obstacles_from")})
        timings["score_live"] = round(time.monotonic() - started, 2)
    return live, failure


def run(config: DemoConfig) -> int:
    """The whole demo; returns the exit status."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def step(name: str, started: float) -> None:
        timings[name] = round(time.monotonic() - started, 2)

    metadata = check_weights(config.weights)
    prepare_out(config)
    print(f"densehybrid_ros demo: {config.frames} frames {config.size[0]}x{config.size[1]} at {config.rate:g} Hz, "
          f"weights {config.weights}", flush=True)
    started = time.monotonic()
    written = write_sim_bag(config)
    mount, mount_source = first_frame_mount(config.bag)
    step("write_bag", started)
    print(f"  bag: {written} frames -> {config.bag} ({timings['write_bag']:.1f} s); replaying to the node ...",
          flush=True)

    live, failure = live_section(config, mount, timings)
    started = time.monotonic()
    offline = metrics_entry(score_offline(config, mount), config.out / "eval_offline" / "report.md")
    step("score_offline", started)

    started = time.monotonic()
    overlays = write_overlays(recorded_overlays(config.recorded) if config.recorded.exists() else [],
                              config.out, config.rate)
    step("overlays", started)
    timings["total"] = round(time.monotonic() - t0, 2)
    summary = {"weights": str(config.weights), "weights_sha256": file_sha256(config.weights),
               "weights_provenance": metadata.provenance,
               "bag": {"path": str(config.bag), "frames": written, "seed": config.seed, "size": list(config.size),
                       "rate": config.rate, "split": SPLIT, "speed_mps": SPEED_MPS},
               "mount": mount_record(mount, mount_source), "live": live, "offline": offline, "overlay": overlays, "timings_s": timings}
    (config.out / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    report = write_report(summary, config.out)
    print(text_table(*score_rows(summary)))
    print(text_table(*result_rows(summary)))
    print(f"  node: {live['node'].get('processed', 0)}/{written} frames processed, {live.get('scored_frames', 0)} "
          f"recorded and scored; total {timings['total']:.0f} s")
    print(f"  wrote {config.out / 'metrics.json'}, {report}, {config.out / 'overlay.gif'}")
    if failure:
        print(f"densehybrid-demo: error: live run failed: {failure}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="densehybrid-demo", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    ap.add_argument("--weights", type=Path, default=None, help=f"default: share/densehybrid_ros/{DEFAULT_WEIGHTS}")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rate", type=float, default=4.0, help="frames per second of the bag and of the replay")
    ap.add_argument("--size", type=parse_size, default=(512, 256), help="WxH (default 512x256)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep-going", action="store_true",
                    help="when the live run fails, still score offline and write the report (exit status 1)")
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    if not 0 < args.rate <= 100:
        parser.error("--rate must be in (0, 100]")
    weights = (args.weights or default_weights()).expanduser().resolve()
    config = DemoConfig(out=args.out.resolve(), weights=weights, frames=args.frames, rate=args.rate, size=args.size,
                        seed=args.seed, keep_going=args.keep_going)
    try:
        return run(config)
    except ToolError as error:
        print(f"densehybrid-demo: error: {error}", file=sys.stderr)
        return error.code


if __name__ == "__main__":
    sys.exit(main())
