"""TensorBoard output of a real run: read back with TensorBoard's own reader, then served by a real TensorBoard."""

from __future__ import annotations

import io
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from servers import free_port, serving, tail

EPOCHS = 3  # the shared `trained_run` fixture trains for 3 epochs with histograms every epoch
PER_EPOCH = ["train/loss", "train/acc", "val/loss", "val/acc", "val/acc_top5", "val/acc_best", "lr",
             "throughput/img_s", "time/epoch_s", "time/cpu_wait_s"]
TEST = ["test/loss", "test/acc", "test/acc_top5", *(f"test/{score}_{avg}" for avg in ("macro", "weighted")
                                                    for score in ("precision", "recall", "f1"))]
IMAGES = ["inputs/train_batch", "filters/first_conv", "test/confusion_matrix"]
HPARAM_METRICS = {*TEST, "val/acc_best"}
FIRST_CONV = "features.0.weight"
SERVER_DEADLINE_S = 60
LOG_EVERY_N_STEPS = 50  # configs/trainer/default.yaml, which the shared run keeps


# ---- reading the event file back -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def events(trained_run):
    run_dir, _ = trained_run
    files = list(run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1, f"expected one event file directly in the run dir, found {files}"
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def plugin_content(acc, plugin):
    try:
        return acc.PluginTagToContent(plugin)
    except KeyError:
        pytest.fail(f"no {plugin!r} plugin data in the event file")


def series(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_scalar_tags_present(events):
    tags = set(events.Tags()["scalars"])
    missing = [t for t in PER_EPOCH + TEST if t not in tags]
    assert not missing, f"missing scalar tags {missing}; logged: {sorted(tags)}"
    assert f"grad_norm/{FIRST_CONV}" in tags


def test_per_epoch_scalars_once_per_epoch_and_finite(events):
    grad_norms = [t for t in events.Tags()["scalars"] if t.startswith("grad_norm/")]
    assert grad_norms
    for tag in PER_EPOCH + grad_norms:
        points = series(events, tag)
        assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), f"{tag}: steps {[s for s, _ in points]}"
        assert all(math.isfinite(v) for _, v in points), f"{tag}: {points}"
    for tag in grad_norms:
        assert all(v > 0 for _, v in series(events, tag)), tag


def test_scalar_values_are_sensible(events, trained_run):
    _, metrics = trained_run
    values = {t: [v for _, v in series(events, t)] for t in PER_EPOCH + TEST}
    for tag in ("train/acc", "val/acc", "val/acc_top5", "val/acc_best", "test/acc", "test/acc_top5"):
        assert all(0.0 <= v <= 1.0 for v in values[tag]), (tag, values[tag])
    for tag in ("train/loss", "val/loss", "test/loss"):
        assert all(v > 0 for v in values[tag]), (tag, values[tag])
    for top1, top5 in zip(values["val/acc"], values["val/acc_top5"]):
        assert top1 <= top5 + 1e-6
    assert values["test/acc"][0] <= values["test/acc_top5"][0] + 1e-6
    # val/acc_best is the running maximum of val/acc.
    running = [max(values["val/acc"][: i + 1]) for i in range(EPOCHS)]
    assert values["val/acc_best"] == pytest.approx(running, abs=1e-6)
    assert all(v > 0 for v in values["lr"])
    assert all(v > 0 for v in values["throughput/img_s"])
    assert all(v > 0 for v in values["time/epoch_s"])
    # The model learnt something, and the curves are what the run itself reported.
    assert values["train/loss"][-1] < values["train/loss"][0]
    assert values["val/acc"][-1] > 0.5
    for tag in TEST:
        assert values[tag] == [pytest.approx(metrics[tag], rel=1e-5)], tag
    assert values["val/acc_best"][-1] == pytest.approx(metrics["val/acc_best"], rel=1e-5)


def test_test_scalars_logged_once_at_last_epoch(events):
    for tag in TEST:
        assert [s for s, _ in series(events, tag)] == [EPOCHS], tag


def test_histograms_match_the_weights(events, trained_run):
    run_dir, _ = trained_run
    hist_tags = set(events.Tags()["histograms"])
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == EPOCHS
    params = state["model"]
    assert FIRST_CONV in params
    for name in params:
        for kind in ("weights", "grads"):
            tag = f"{kind}/{name}"
            assert tag in hist_tags, f"missing histogram {tag}"
            assert [h.step for h in events.Histograms(tag)] == list(range(1, EPOCHS + 1)), tag
    # last.ckpt holds the weights after the final epoch: the same tensor the step-3 histogram summarised.
    for name in (FIRST_CONV, next(reversed(params))):
        w = params[name].float()
        h = events.Histograms(f"weights/{name}")[-1].histogram_value
        assert h.num == w.numel(), name
        assert h.min == pytest.approx(float(w.min()), abs=1e-6)
        assert h.max == pytest.approx(float(w.max()), abs=1e-6)
        assert h.sum == pytest.approx(float(w.sum()), rel=1e-4, abs=1e-4)
        g = events.Histograms(f"grads/{name}")[-1].histogram_value
        assert g.num == w.numel() and g.max > g.min


def test_images(events, trained_run):
    run_dir, _ = trained_run
    assert set(IMAGES) <= set(events.Tags()["images"]), events.Tags()["images"]
    # The filters: untrained at step 0, then with the histograms after every epoch (the last one included).
    expected_steps = {"inputs/train_batch": [0], "filters/first_conv": list(range(EPOCHS + 1)),
                      "test/confusion_matrix": [EPOCHS]}
    for tag in IMAGES:
        imgs = events.Images(tag)
        assert [i.step for i in imgs] == expected_steps[tag], tag
        img = imgs[-1]
        assert img.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n", tag
        decoded = Image.open(io.BytesIO(img.encoded_image_string))
        assert decoded.size == (img.width, img.height), tag
        lo, hi = decoded.convert("L").getextrema()
        assert hi > lo, f"{tag} is a blank image"
    # A grid of a whole batch of 28x28 digits, not a single digit.
    batch = events.Images("inputs/train_batch")[0]
    assert batch.width > 2 * 28 and batch.height > 2 * 28


def decoded(image_event) -> torch.Tensor:
    """An image summary's PNG as grey levels 0..255."""
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)).convert("L"),
                                       dtype=np.float32))


def test_learned_filters_at_the_end_differ_from_step_0(events):
    filters = events.Images("filters/first_conv")
    untrained, learned = filters[0], filters[-1]
    assert (untrained.step, learned.step) == (0, EPOCHS)
    assert (untrained.width, untrained.height) == (learned.width, learned.height)
    change = (decoded(learned) - decoded(untrained)).abs()
    # Training moved the filters visibly: many pixels, by more than rounding (grey levels 0..255).
    assert change.mean() > 5 and (change > 16).float().mean() > 0.1, (float(change.mean()), float(change.max()))


def test_learning_curves_layout_pairs_train_and_val(events):
    content = plugin_content(events, "custom_scalars")
    (tag,) = content
    layout = layout_pb2.Layout.FromString(events.Tensors(tag)[-1].tensor_proto.string_val[0])
    first = layout.category[0]
    assert first.title == "Learning curves"
    charts = {chart.title: list(chart.multiline.tag) for chart in first.chart}
    assert list(charts) == ["loss: train vs val", "accuracy: train vs val"]
    # The chart's tags are regular expressions: each must select exactly the one logged curve meant.
    logged = events.Tags()["scalars"]
    selected = {title: [t for t in logged if any(re.search(rx, t) for rx in regexes)]
                for title, regexes in charts.items()}
    assert selected == {"loss: train vs val": ["train/loss", "val/loss"],
                        "accuracy: train vs val": ["train/acc", "val/acc"]}


def test_loss_step_every_log_every_n_steps(events, trained_run):
    run_dir, _ = trained_run
    steps = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    points = series(events, "train/loss_step")
    assert steps > 2 * LOG_EVERY_N_STEPS
    assert [s for s, _ in points] == list(range(LOG_EVERY_N_STEPS, steps + 1, LOG_EVERY_N_STEPS))
    assert all(math.isfinite(v) and v > 0 for _, v in points)
    assert points[-1][1] < points[0][1]  # the loss went down along the run


def test_projector_is_off_by_default(trained_run):
    run_dir, _ = trained_run
    assert not (run_dir / "projector_config.pbtxt").exists()
    assert not list(run_dir.glob("0*/")), "embedding folders written with logger.projector=false"


def test_projector_holds_the_test_features_labels_and_sprite(make_cfg, tmp_path):
    from cnnlab.run.lifecycle import train

    run_dir = tmp_path / "run"
    # A class-ordered test split (mnist_sample's 500 test digits): 200 samples must still cover every class.
    train(make_cfg("trainer.max_epochs=1", "trainer.limit_train_batches=4", "logger.graph=false",
                   "trainer.summary=none", "logger.projector=true", "logger.projector_max_samples=200"), overrides=[])
    config = (run_dir / "projector_config.pbtxt").read_text()
    paths = dict(re.findall(r'(\w+_path): "([^"]+)"', config))
    assert set(paths) == {"tensor_path", "metadata_path", "image_path"}, config
    features = torch.tensor([[float(v) for v in line.split("\t")]
                             for line in (run_dir / paths["tensor_path"]).read_text().splitlines()])
    header, *rows = [line.split("\t") for line in (run_dir / paths["metadata_path"]).read_text().splitlines()]
    assert header == ["label", "predicted", "correct"]
    assert 150 <= len(rows) <= 200 and features.shape == (len(rows), 84)  # LeNet-5's head takes 84 features
    assert {r[0] for r in rows} == {str(d) for d in range(10)}
    assert all(r[2] == ("yes" if r[0] == r[1] else "no") for r in rows)
    # They are the head's input: the tested (best) weights' last layer maps them to the predicted labels.
    weights = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["model"]
    logits = features @ weights["classifier.5.weight"].T + weights["classifier.5.bias"]
    assert [str(p) for p in logits.argmax(dim=1).tolist()] == [r[1] for r in rows]
    sprite = Image.open(run_dir / paths["image_path"])
    side = math.ceil(math.sqrt(len(rows))) * 28
    assert sprite.size == (side, side) and sprite.convert("L").getextrema()[1] > 0
    assert "single_image_dim: 28" in config


def test_model_graph(events):
    assert events.Tags()["graph"], "no model graph in the event file"
    nodes = [node.name for node in events.Graph().node]
    assert "input/x" in nodes
    for layer in ("Sequential[features]/Conv2d[0]", "Sequential[features]/Conv2d[3]", "Sequential[classifier]/Linear[5]"):
        assert any(layer in name for name in nodes), layer


class NotTraceable(torch.nn.Module):
    def forward(self, x):
        return {"logits": x.flatten(1), "note": "not a tensor"}


@pytest.mark.parametrize("graph", [True, False])
def test_graph_that_cannot_be_traced_or_is_off_leaves_the_run_going(tmp_path, caplog, graph):
    from cnnlab.config.migrate import V2_ADDITIONS
    from cnnlab.config.training_schema import Logger, Mlflow
    from cnnlab.engine.tensorboard import TensorBoardLogger

    section = Logger(enabled=True, histogram_every_n_epochs=0, images=False, hparams=False, graph=graph, flush_secs=30,
                     projector=False, projector_max_samples=1, mlflow=Mlflow(**V2_ADDITIONS["logger.mlflow"]))
    tb = TensorBoardLogger(section, tmp_path)
    model = NotTraceable().train()
    with caplog.at_level("WARNING"):
        tb.graph(model, torch.zeros(1, 1, 4, 4))
    assert model.training
    assert ("model graph not added to TensorBoard" in caplog.text) == graph
    tb.scalars({"train/loss": 1.0}, 1)
    tb.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert not acc.Tags()["graph"] and acc.Tags()["scalars"] == ["train/loss"]


def test_confusion_matrix_text_matches_metrics(events, trained_run):
    _, metrics = trained_run
    text_tags = plugin_content(events, "text")
    tags = [t for t in text_tags if t.startswith("test/confusion_matrix")]
    assert tags, f"no confusion-matrix text; text tags: {list(text_tags)}"
    tensors = events.Tensors(tags[0])
    assert [t.step for t in tensors] == [EPOCHS]
    table = tensors[0].tensor_proto.string_val[0].decode()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| true \\ pred |")
    rows = [[int(c) for c in line.strip("|").split("|")[1:]] for line in lines[2:]]
    assert rows == metrics["test/confusion_matrix"]
    assert len(rows) == 10 and sum(map(sum, rows)) > 0


def test_per_class_scores_text_matches_metrics(events, trained_run):
    _, metrics = trained_run
    tensors = events.Tensors("test/per_class/text_summary")
    assert [t.step for t in tensors] == [EPOCHS]
    lines = [line for line in tensors[0].tensor_proto.string_val[0].decode().splitlines() if line.startswith("|")]
    assert lines[0] == "| class | precision | recall | F1 | support |"
    for line, name in zip(lines[2:], [str(d) for d in range(10)], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == name
        for cell, score in zip(cells[1:4], ("precision", "recall", "f1")):
            assert float(cell) == pytest.approx(metrics[f"test/per_class_{score}"][name], abs=5e-5)
        assert int(cells[4]) == sum(metrics["test/confusion_matrix"][int(name)])


def test_hparams_in_the_same_event_file(events, trained_run):
    run_dir, _ = trained_run
    content = plugin_content(events, "hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == HPARAM_METRICS
    # Every hparams metric is also a scalar in this run, so the HParams tab can show its value.
    assert HPARAM_METRICS <= set(events.Tags()["scalars"])
    names = {h.name for h in experiment.hparam_infos}
    assert {"seed", "model.name", "optimizer.lr", "trainer.max_epochs"} <= names
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    cfg = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert start.hparams["model.name"].string_value == cfg["model"]["name"]
    assert start.hparams["seed"].number_value == cfg["seed"]
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(cfg["optimizer"]["lr"])
    assert start.hparams["trainer.max_epochs"].number_value == EPOCHS
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS


# ---- a real TensorBoard server -----------------------------------------------------------------------------
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, never via a proxy


class Server:
    def __init__(self, proc, port, log_path):
        self.proc, self.port, self.log_path = proc, port, log_path

    def url(self, path: str, **query) -> str:
        q = ("?" + urllib.parse.urlencode(query)) if query else ""
        return f"http://127.0.0.1:{self.port}{path}{q}"

    def get(self, path: str, **query):
        with _NO_PROXY.open(self.url(path, **query), timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url(path), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with _NO_PROXY.open(req, timeout=10) as r:
            return json.loads(r.read())

    def log(self) -> str:
        return tail(self.log_path)


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    run_dir, _ = trained_run
    log_path = tmp_path_factory.mktemp("tensorboard") / "server.log"
    port = free_port()
    srv = Server(None, port, log_path)
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir.parent), "--host", "127.0.0.1",
               "--port", str(port), "--load_fast=false", "--reload_interval", "0"]
    # test/acc is the last scalar written: once it is visible the whole run has been loaded.
    with serving(command, log_path, lambda: "test/acc" in srv.get("/data/plugin/scalars/tags").get(run_dir.name, {}),
                 SERVER_DEADLINE_S, "tensorboard") as proc:
        srv.proc = proc
        yield srv


@pytest.mark.slow  # a real TensorBoard server
def test_server_lists_run_and_scalar_tags(server, trained_run):
    run = trained_run[0].name
    assert server.get("/data/runs") == [run]
    tags = server.get("/data/plugin/scalars/tags")
    assert set(tags) == {run}
    assert set(PER_EPOCH + TEST) <= set(tags[run]), sorted(tags[run])


@pytest.mark.slow  # a real TensorBoard server
def test_server_serves_val_acc_curve(server, trained_run, events):
    run = trained_run[0].name
    points = server.get("/data/plugin/scalars/scalars", run=run, tag="val/acc")
    assert [p[1] for p in points] == list(range(1, EPOCHS + 1))
    assert [p[2] for p in points] == pytest.approx([v for _, v in series(events, "val/acc")])


@pytest.mark.slow  # a real TensorBoard server
def test_server_enables_the_dashboards(server, trained_run):
    run = trained_run[0].name
    listing = server.get("/data/plugins_listing")
    for plugin in ("scalars", "custom_scalars", "histograms", "images", "text", "hparams"):
        assert listing[plugin]["enabled"], plugin
    assert set(IMAGES) <= set(server.get("/data/plugin/images/tags")[run])
    assert f"weights/{FIRST_CONV}" in server.get("/data/plugin/histograms/tags")[run]


@pytest.mark.slow  # a real TensorBoard server
def test_server_custom_scalars_tab_draws_train_and_val_together(server, trained_run, events):
    run = trained_run[0].name
    layout = server.get("/data/plugin/custom_scalars/layout")
    assert layout["category"][0]["title"] == "Learning curves", layout
    chart = layout["category"][0]["chart"][0]
    for regex, tag in zip(chart["multiline"]["tag"], ["train/loss", "val/loss"]):
        served = server.get("/data/plugin/custom_scalars/scalars", run=run, tag=regex)
        assert served["regex_valid"] and list(served["tag_to_events"]) == [tag], served
        assert [p[2] for p in served["tag_to_events"][tag]] == pytest.approx([v for _, v in series(events, tag)])


@pytest.mark.slow  # a real TensorBoard server
def test_server_hparams_tab_shows_the_run(server, trained_run):
    run_dir, metrics = trained_run
    body = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_FAILURE",
                                                      "STATUS_RUNNING"], "colParams": [], "startIndex": 0,
            "sliceSize": 10}
    deadline = time.monotonic() + 10  # hparams summaries are the very last events in the file
    while True:
        groups = server.post("/data/plugin/hparams/session_groups", body)
        if groups.get("sessionGroups") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert groups["totalSize"] == 1, groups
    group = groups["sessionGroups"][0]
    assert [s["name"] for s in group["sessions"]] == [run_dir.name]
    assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
    assert group["hparams"]["model.name"] == "lenet5"
    values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    assert set(values) == HPARAM_METRICS
    for tag in HPARAM_METRICS:
        assert values[tag] == pytest.approx(metrics[tag], rel=1e-5), tag
