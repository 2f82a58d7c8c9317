"""Bad configuration is rejected before any job runs, with one line naming the key and what is allowed."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
from conftest import ROOT, copy_workflow, load_yaml, run_snakemake, write_config

from diffusion_report.config import ConfigError, validate_config

SCHEMA = ROOT / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def default_config():
    return load_yaml(ROOT / "config.yaml")


def _set(cfg: dict, dotted: str, value):
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


_DELETE = object()


def _bad_files(tmp: Path) -> dict[str, str]:
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "notimage.png").write_bytes(b"this is text, not a PNG")
    (tmp / "folder.png").mkdir(exist_ok=True)
    return {"empty": str(tmp / "empty.png"), "notimage": str(tmp / "notimage.png"), "folder": str(tmp / "folder.png")}


# (id, dotted key, value, fragments that must appear in the message)
CASES = [
    ("unknown top-level key", "sedd", 1, ["unknown key 'sedd'", "did you mean 'seed'"]),
    ("misspelled nested key", "forward.image_sise", 64, ["forward", "unknown key 'image_sise'", "image_size"]),
    ("seed wrong type", "seed", "zero", ["seed", "'zero' is not of type 'integer'"]),
    ("negative seed", "seed", -1, ["seed: -1 is out of range", "[0, "]),
    ("unknown device", "device", "tpu", ["device", "'tpu' is not allowed", "'cuda'"]),
    ("unknown schedule", "schedule.kind", "cosin", ["schedule.kind", "'cosin'", "'cosine'"]),
    ("T zero", "schedule.T", 0, ["schedule.T: 0 is out of range", "an integer in [1, 100000]"]),
    ("T not integer", "schedule.T", 10.5, ["schedule.T", "integer"]),
    ("beta above one", "schedule.beta_end", 1.5, ["schedule.beta_end: 1.5 is out of range", "a number in (0, 1)"]),
    ("beta zero", "schedule.beta_start", 0, ["schedule.beta_start: 0 is out of range", "a number in (0, 1)"]),
    ("betas reversed", "schedule.beta_start", 0.05, ["schedule.beta_start", "below schedule.beta_end"]),
    ("empty image list", "forward.images", [], ["forward.images", "should be non-empty"]),
    ("missing image file", "forward.images", ["no/such/file.png"], ["forward.images[0]", "no/such/file.png", "neither an existing file"]),
    ("unknown sample name", "forward.images", ["astronot"], ["forward.images[0]", "astronot"]),
    ("image_size zero", "forward.image_size", 0, ["forward.image_size: 0 is out of range", "[8, 1024]"]),
    ("image_size absurd", "forward.image_size", 100000, ["forward.image_size: 100000 is out of range", "[8, 1024]"]),
    ("negative timestep", "forward.show_timesteps", [0, -5], ["forward.show_timesteps[1]: -5 is out of range", "[0, inf)"]),
    ("timestep above T", "forward.show_timesteps", [0, 1001], ["forward.show_timesteps", "1001", "above schedule.T = 1000"]),
    ("duplicate timesteps", "forward.show_timesteps", [0, 10, 10], ["forward.show_timesteps", "non-unique"]),
    ("mse_max_t above T", "forward.mse_max_t", 2000, ["forward.mse_max_t", "2000", "above schedule.T"]),
    ("mse_max_t zero", "forward.mse_max_t", 0, ["forward.mse_max_t: 0 is out of range"]),
    ("theory timestep above T", "theory.check_timesteps", [5000], ["theory.check_timesteps", "5000"]),
    ("mc_samples too few", "theory.mc_samples", 3, ["theory.mc_samples: 3 is out of range", "[100, "]),
    ("ddim step above T", "ddim.step_counts", [10, 2000], ["ddim.step_counts", "2000", "training T = 1000"]),
    ("ddim step zero", "ddim.step_counts", [0, 10], ["ddim.step_counts[0]: 0 is out of range", "[1, inf)"]),
    ("ddim duplicate steps", "ddim.step_counts", [10, 10], ["ddim.step_counts", "non-unique"]),
    ("ddim empty steps", "ddim.step_counts", [], ["ddim.step_counts", "non-empty"]),
    ("eta above one", "ddim.eta", 1.5, ["ddim.eta: 1.5 is out of range", "a number in [0, 1]"]),
    ("eta negative", "ddim.eta", -0.1, ["ddim.eta: -0.1 is out of range", "a number in [0, 1]"]),
    ("unknown skip type", "ddim.skip_type", "linear", ["ddim.skip_type", "'uniform'"]),
    ("unknown precision", "ddim.precision", "half", ["ddim.precision", "'auto'", "'float32'", "'bfloat16'"]),
    ("one reweight scale", "t2i.reweight_sweep.scales", [2.0], ["t2i.reweight_sweep.scales", "too short"]),
    ("reweight scale out of range", "t2i.reweight_sweep.scales", [0.0, 20.0], ["t2i.reweight_sweep.scales", "20.0 is out of range"]),
    ("unknown model source", "ddim.model.source", "download", ["ddim.model.source", "'train'", "'pretrained'"]),
    ("guidance zero", "p2p.guidance_scale", 0, ["p2p.guidance_scale: 0 is out of range", "(0, 100]"]),
    ("guidance negative", "p2p.guidance_scale", -7.5, ["p2p.guidance_scale: -7.5 is out of range"]),
    ("unknown p2p scheduler", "p2p.scheduler", "euler", ["p2p.scheduler", "'ddim'", "'pndm'"]),
    ("empty edit list", "p2p.edits", [], ["p2p.edits", "non-empty"]),
    ("empty prompt", "p2p.edits.0.source", "", ["p2p.edits[0].source: the prompt is empty (''); write some text"]),
    ("blank prompt", "p2p.edits.0.target", "   ", ["p2p.edits[0].target: the prompt is empty ('   ')"]),
    ("unknown edit mode", "p2p.edits.0.mode", "swap", ["p2p.edits[0].mode", "'replace'"]),
    ("word swap with different word counts", "p2p.edits.0.target", "a big red square on a white background",
     ["p2p.edits[0] (shape_swap)", "same number of words", "source has 7, target 8"]),
    ("blend word not in prompt", "p2p.edits.0.blend_words", ["triangle"], ["p2p.edits[0] (shape_swap): blend word 'triangle' is in neither prompt"]),
    ("reweight word not in prompt", "p2p.edits.2.reweight", {"words": ["blue"], "scale": 2.0}, ["p2p.edits[2] (reweight_red): reweight word 'blue' is not in the target prompt"]),
    ("cross_replace_steps above one", "p2p.edits.0.cross_replace_steps", 1.5, ["p2p.edits[0].cross_replace_steps"]),
    ("edited word's fraction above one", "t2i.eval.edited_word_cross_replace_steps", 1.5, ["t2i.eval.edited_word_cross_replace_steps", "1.5"]),
    ("two-object blend threshold of zero", "t2i.eval.two_object", {"blend_threshold": 0}, ["t2i.eval.two_object.blend_threshold", "0"]),
    ("two-object blend threshold of one (an empty mask)", "t2i.eval.two_object", {"blend_threshold": 1}, ["t2i.eval.two_object.blend_threshold", "1"]),
    ("unknown two-object key", "t2i.eval.two_object", {"blend": 0.5}, ["t2i.eval.two_object", "'blend'"]),
    ("reweight block on a replace edit", "p2p.edits.0.reweight", {"words": ["red"], "scale": 2.0}, ["reweight is only used with mode reweight"]),
    ("base_mode none with a different target", "p2p.edits.2.target", "a red square on a white background", ["base_mode none reweights the source prompt itself"]),
    ("edit name unsafe for files", "p2p.edits.0.name", "../evil", ["p2p.edits[0].name: '../evil' is not allowed", "letters, digits"]),
    ("too long prompt", "p2p.edits.1.source", " ".join(["red"] * 80), ["p2p.edits[1] (colour_swap): source prompt has 80 words", "at most 75"]),
    ("unsupported output format", "report.formats", ["html", "docx"], ["report.formats[1]", "'docx' is not allowed"]),
    ("empty formats", "report.formats", [], ["report.formats", "non-empty"]),
    ("t2i radius min equal to max", "t2i.data.radius", [4.0, 4.0], ["t2i.data.radius: [4.0, 4.0] needs min below max"]),
    ("channels not multiple of 8", "ddim.train.channels", [30, 64], ["ddim.train.channels[0]", "multiple of 8"]),
    ("missing required key", "ddim.eta", _DELETE, ["ddim", "'eta' is a required property"]),
    ("quality step above T", "ddim.quality.step_counts", [10, 5000], ["ddim.quality.step_counts: 5000 is above the training T = 1000"]),
    ("reconstruction step above T", "ddim.reconstruction.step_counts", [2000], ["ddim.reconstruction.step_counts: 2000"]),
    ("interpolation steps above T", "ddim.interpolation.steps", 1001, ["ddim.interpolation.steps: 1001"]),
    ("quality eta above one", "ddim.quality.etas", [0.0, 2.0], ["ddim.quality.etas[1]: 2.0 is out of range"]),
    ("quality with a pretrained model", "ddim.model.source", "pretrained",
     ["ddim.quality.enabled", "digit reader", "set ddim.quality.enabled: false"]),
    ("missing shipped DDIM weights", "ddim.weights", "models/no-such-folder",
     ["ddim.weights", "models/no-such-folder", "set ddim.retrain: true"]),
    ("too few DDIM samples", "ddim.num_samples", 1, ["ddim.num_samples: 1 is out of range"]),
    ("prompt beyond the embedded model's text window", "p2p.edits.1.target", "a big red square on a white background a red circle",
     ["p2p.edits[1] (colour_swap).target: 11 tokens; at most 10 fit the embedded model's text window", "t2i.model.max_length = 12"]),
    ("punctuation counts as tokens", "p2p.edits.2.source", "a big red, square on a white, black background.",
     ["p2p.edits[2] (reweight_red).source: 12 tokens; at most 10 fit"]),
    ("NaN passes JSON schema bounds", "p2p.guidance_scale", float("nan"), ["p2p.guidance_scale: nan is not a finite number"]),
    ("infinite radius", "t2i.data.radius", [3.0, float("inf")], ["t2i.data.radius[1]: inf is not a finite number"]),
    ("line break in a mapping key", "p2p.edits.0.cross_replace_steps", {"default": 0.8, "two\nlines": float("nan")},
     ["p2p.edits[0].cross_replace_steps['two\\nlines']: nan is not a finite number"]),
    ("nested value read as text", "forward.image_size", "64",
     ["forward.image_size: '64' is not of type 'integer'", "--config KEY='{...}' as text", "--configfile FILE"]),
    ("nested flag read as text", "ddim.clip_sample", "True", ["ddim.clip_sample: 'True' is not of type 'boolean'", "--configfile FILE"]),
]


@pytest.mark.parametrize("case_id, key, value, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_rejected_with_a_message_naming_the_key(default_config, case_id, key, value, fragments):
    cfg = copy.deepcopy(default_config)
    _set(cfg, key, value)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, SCHEMA, base_dir=ROOT)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    # one line per problem, each starting with "config error:"
    lines = message.splitlines()[1:]
    assert lines and all(line.strip().startswith("config error:") for line in lines)
    assert len(set(lines)) == len(lines), message
    # list items are named as p2p.edits[0].source, never p2p.edits.0.source; no regex jargon (a message
    # that quotes a folder quotes the checkout's path, which may hold such a pair: mktemp's /tmp/tmp.2x)
    own_text = message.replace(str(ROOT), "<checkout>")
    assert not re.search(r"[A-Za-z_]\.\d", own_text) and "does not match" not in message, message


@pytest.mark.parametrize("kind", ["empty", "notimage", "folder"])
def test_bad_image_files_are_rejected(default_config, tmp_path, kind):
    cfg = copy.deepcopy(default_config)
    cfg["forward"]["images"] = [_bad_files(tmp_path)[kind]]
    with pytest.raises(ConfigError, match=r"forward\.images\[0\]"):
        validate_config(cfg, SCHEMA, base_dir=ROOT)


def test_unreadable_image_is_rejected(default_config, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    path = tmp_path / "secret.png"
    path.write_bytes(b"\x89PNG")
    path.chmod(0)
    cfg = copy.deepcopy(default_config)
    cfg["forward"]["images"] = [str(path)]
    with pytest.raises(ConfigError, match="not readable"):
        validate_config(cfg, SCHEMA, base_dir=ROOT)


def test_huge_image_is_rejected(default_config, tmp_path):
    from PIL import Image

    path = tmp_path / "huge.png"
    Image.new("1", (12000, 12000)).save(path)  # 144 Mpx, a few kB on disk
    cfg = copy.deepcopy(default_config)
    cfg["forward"]["images"] = [str(path)]
    with pytest.raises(ConfigError, match=r"forward\.images\[0\].*too large|more than"):
        validate_config(cfg, SCHEMA, base_dir=ROOT)


def test_missing_pretrained_model_is_rejected_offline(default_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = copy.deepcopy(default_config)
    cfg["ddim"]["model"] = {"source": "pretrained", "pretrained": "nobody/no-such-model"}
    empty = tmp_path / "empty_model"
    empty.mkdir()
    cfg["p2p"]["model"] = {"source": "pretrained", "pretrained": str(empty)}
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, SCHEMA, base_dir=ROOT)
    msg = str(info.value)
    assert "ddim.model.pretrained: 'nobody/no-such-model' is not in the Hugging Face cache" in msg
    assert "hf download nobody/no-such-model" in msg
    assert f"p2p.model.pretrained: folder {str(empty)!r} is not a complete diffusers text-to-image pipeline folder" in msg
    assert msg.count("model_index.json") == 0 and msg.count("unet/config.json") == 1


# Placeholder files of a complete local folder, per layout (the check looks at names, not contents)
_PIPELINE_FILES = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                   "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/vocab.json",
                   "tokenizer/merges.txt", "scheduler/scheduler_config.json"]
_UNET_FILES = ["config.json", "diffusion_pytorch_model.bin", "scheduler_config.json"]


def _model_folder(root: Path, files: list[str]) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _model_config(default_config, stage: str, folder: Path) -> dict:
    cfg = copy.deepcopy(default_config)
    cfg["ddim"]["retrain"] = True  # the shipped digits weights are not what this test is about
    if stage == "ddim":
        cfg["ddim"]["quality"]["enabled"] = False
    cfg[stage]["model"] = {"source": "pretrained", "pretrained": str(folder)}
    return cfg


@pytest.mark.parametrize("stage, files, removed, named", [
    ("p2p", _PIPELINE_FILES, ["unet/diffusion_pytorch_model.safetensors"], ["unet/diffusion_pytorch_model.safetensors (or diffusion_pytorch_model.bin)"]),
    ("p2p", _PIPELINE_FILES, ["text_encoder/model.safetensors"], ["text_encoder/model.safetensors (or pytorch_model.bin)"]),
    ("p2p", _PIPELINE_FILES, ["tokenizer/vocab.json", "tokenizer/merges.txt"], ["tokenizer/ files (tokenizer.json, vocab.json"]),
    ("p2p", _PIPELINE_FILES, ["scheduler/scheduler_config.json"], ["scheduler/scheduler_config.json"]),
    ("p2p", _PIPELINE_FILES + ["vae/config.json"], [], ["vae/diffusion_pytorch_model.safetensors"]),
    ("p2p", ["model_index.json"], [], ["unet/config.json", "text_encoder/config.json", "tokenizer/ files", "scheduler/scheduler_config.json"]),
    ("ddim", _UNET_FILES, ["diffusion_pytorch_model.bin"], ["diffusion_pytorch_model.safetensors (or diffusion_pytorch_model.bin)"]),
    ("ddim", _UNET_FILES, ["scheduler_config.json"], ["scheduler_config.json (or scheduler/scheduler_config.json)"]),
    ("ddim", ["unet/config.json", "unet/diffusion_pytorch_model.bin", "scheduler/scheduler_config.json"], [], ["missing: config.json;"]),
], ids=["unet-weights", "text-encoder-weights", "tokenizer", "scheduler", "vae-weights", "only-model-index",
        "ddim-weights", "ddim-scheduler", "ddim-pipeline-layout"])
def test_local_model_folder_missing_a_component_is_rejected(default_config, tmp_path, stage, files, removed, named):
    """What the loaders would fail on seconds into a job is named before any job: component and file."""
    folder = _model_folder(tmp_path / "model", [f for f in files if f not in removed])
    with pytest.raises(ConfigError) as info:
        validate_config(_model_config(default_config, stage, folder), SCHEMA, base_dir=ROOT)
    msg = str(info.value)
    assert f"{stage}.model.pretrained: folder {str(folder)!r} is not a complete diffusers" in msg, msg
    for fragment in named:
        assert fragment in msg, msg
    assert "model_index.json" not in msg


@pytest.mark.parametrize("stage, folder", [
    ("p2p", None), ("p2p", ROOT / "models" / "t2i-shapes" / "model"), ("ddim", None),
], ids=["p2p-placeholders", "p2p-shipped-model", "ddim-placeholders"])
def test_complete_local_model_folder_passes(default_config, tmp_path, stage, folder):
    if folder is None:
        folder = _model_folder(tmp_path / "model", _PIPELINE_FILES if stage == "p2p" else _UNET_FILES)
    validate_config(_model_config(default_config, stage, folder), SCHEMA, base_dir=ROOT)


def test_printed_download_command_exists_in_the_venv(default_config, tmp_path, monkeypatch):
    """The hint names `hf download REPO`; that CLI (installed by the pinned huggingface_hub) must exist."""
    import re
    import subprocess
    import sys

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = copy.deepcopy(default_config)
    cfg["ddim"]["model"] = {"source": "pretrained", "pretrained": "nobody/no-such-model"}
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, SCHEMA, base_dir=ROOT)
    printed = re.search(r"`(\S+) download nobody/no-such-model`", str(info.value))
    assert printed, str(info.value)
    readme = (ROOT / "README.md").read_text()
    assert f"{printed.group(1)} download google/ddpm-cifar10-32" in readme and "huggingface-cli" not in readme
    exe = Path(sys.executable).parent / printed.group(1)
    proc = subprocess.run([str(exe), "download", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "REPO_ID" in proc.stdout


def test_default_config_is_valid(default_config):
    validate_config(copy.deepcopy(default_config), SCHEMA, base_dir=ROOT)


def test_snakemake_rejects_bad_config_before_any_job(tmp_path):
    work = copy_workflow(tmp_path / "wf")
    bad = write_config(tmp_path / "bad.yaml", {"schedule": {"kind": "cosin"}, "forward": {"show_timesteps": [0, 5000]}})
    proc = run_snakemake(work, "--configfile", str(bad), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config error: schedule.kind: 'cosin' is not allowed" in out
    assert not (work / "results").exists()
    assert not (work / "logs").exists()


# What snakemake itself prints before the Snakefile is read (the workflow's default profile, a
# --config overlay); everything else a config error prints must be a "config error:" line.
_SNAKEMAKE_PREAMBLE = ("Using workflow specific profile", "Config file config.yaml is extended")


@pytest.mark.parametrize("args, expected", [
    (["--config", "seed=-1"], ["config error: seed: -1 is out of range"]),
    (["--config", "forward={image_size: 64}"],
     ["config error: forward.image_size: '64' is not of type 'integer'", "--configfile FILE"]),
    (["--config", 'forward={"image_size": 64}'], ["config error: forward.image_size: '64' is not of type 'integer'"]),
], ids=["seed", "nested-yaml", "nested-json"])
def test_config_errors_print_clean_lines_and_exit_1(tmp_path, args, expected):
    """No traceback, no line pointing into rules/common.smk: only the config error lines, exit status 1."""
    work = copy_workflow(tmp_path / "wf")
    proc = run_snakemake(work, "-n", *args, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    for fragment in expected:
        assert fragment in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and all(line.startswith(("config error: ", *_SNAKEMAKE_PREAMBLE)) for line in lines), out
    assert "Traceback" not in out and "common.smk" not in out and "WorkflowError" not in out


def test_the_nested_value_hint_works(tmp_path):
    """What the hint says (a YAML file through --configfile) passes a nested integer as an integer."""
    work = copy_workflow(tmp_path / "wf")
    overlay = write_config(tmp_path / "size.yaml", {"forward": {"image_size": 64}, "ddim": {"enabled": False}})
    proc = run_snakemake(work, "results/forward/x0.safetensors", "-n", "--configfile", str(overlay), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "config error" not in proc.stdout + proc.stderr


def test_the_token_window_check_agrees_with_the_tokenizer(default_config):
    """The config check rejects exactly the prompts the shipped embedded model's tokenizer cannot fit
    (what p2p_edit would fail on after jobs started)."""
    from transformers import PreTrainedTokenizerFast

    from diffusion_report.core.attention import word_token_spans

    tok = PreTrainedTokenizerFast.from_pretrained(str(ROOT / "models" / "t2i-shapes" / "model" / "tokenizer"))
    window = default_config["t2i"]["model"]["max_length"]
    assert tok.model_max_length == window
    words = "a big red square on a white background a red circle on a".split()
    prompts = [" ".join(words[:n]) for n in range(8, 14)]
    prompts += ["a big red, square on a white background.", "a big red, square on a white, black background.",
                "a red square!! on a white background ..."]
    for prompt in prompts:
        cfg = copy.deepcopy(default_config)
        cfg["p2p"]["edits"] = [{"name": "one", "source": prompt, "target": prompt, "mode": "refine"}]
        try:
            word_token_spans(prompt, tok, window)
            fits = True
        except ValueError as exc:
            assert "fit the text encoder" in str(exc)
            fits = False
        try:
            validate_config(cfg, SCHEMA, base_dir=ROOT)
            message = ""
        except ConfigError as exc:
            message = str(exc)
        assert ("text window" not in message) == fits, (prompt, message)


# -------------------------------------------------------------------------------- the hub, online
@pytest.fixture
def silent_hub():
    """An endpoint that accepts connections and never answers (a hub behind a dead network)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def answering_hub():
    """An endpoint that answers every request (404, as the hub does for an unknown path)."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _online(monkeypatch, tmp_path, endpoint, timeout=1.0):
    from diffusion_report import config as config_module

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(config_module, "HUB_TIMEOUT_S", timeout)


def _hub_config(default_config) -> dict:
    cfg = copy.deepcopy(default_config)
    cfg["ddim"]["retrain"] = True  # the shipped digits weights are not what these tests are about
    cfg["p2p"]["model"] = {"source": "pretrained", "pretrained": "nobody/some-model"}
    return cfg


@pytest.mark.parametrize("hub", ["silent", "refused"])
def test_unreachable_hub_is_a_config_error_within_the_timeout(default_config, tmp_path, monkeypatch, request, hub):
    import time

    endpoint = request.getfixturevalue("silent_hub") if hub == "silent" else _closed_port()
    _online(monkeypatch, tmp_path, endpoint, timeout=1.0)
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        validate_config(_hub_config(default_config), SCHEMA, base_dir=ROOT)
    elapsed = time.monotonic() - start
    msg = str(info.value)
    assert f"p2p.model.pretrained: 'nobody/some-model' is not in the Hugging Face cache and the hub ({endpoint}) did not answer within 1 s" in msg
    assert ("timed out" in msg or "no answer" in msg) if hub == "silent" else "refused" in msg
    assert "hf download nobody/some-model" in msg
    assert elapsed < 2.5


def test_answering_hub_passes(default_config, tmp_path, monkeypatch, answering_hub):
    _online(monkeypatch, tmp_path, answering_hub)
    validate_config(_hub_config(default_config), SCHEMA, base_dir=ROOT)


def test_cached_model_needs_no_hub(default_config, tmp_path, monkeypatch):
    _online(monkeypatch, tmp_path, _closed_port())
    repo = tmp_path / "hf" / "hub" / "models--nobody--some-model"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model_index.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (repo / "blobs").mkdir()
    validate_config(_hub_config(default_config), SCHEMA, base_dir=ROOT)


def test_snakemake_stops_early_when_the_hub_does_not_answer(tmp_path, silent_hub):
    """HF_HUB_OFFLINE unset, a hub id not in the cache, no answer: a config error after ~3 s, no job."""
    import time

    work = copy_workflow(tmp_path / "wf")
    overlay = write_config(tmp_path / "hub.yaml", {"ddim": {"enabled": False},
                                                  "p2p": {"model": {"source": "pretrained", "pretrained": "nobody/some-model"}}})
    start = time.monotonic()
    proc = run_snakemake(work, "--configfile", str(overlay), timeout=300,
                         env={"HF_HUB_OFFLINE": "", "HF_ENDPOINT": silent_hub, "HF_HOME": str(tmp_path / "hf")})
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "config error: p2p.model.pretrained: 'nobody/some-model' is not in the Hugging Face cache and the hub" in out
    assert "within 3 s" in out and "Traceback" not in out
    assert not (work / "results").exists()
    assert elapsed < 30, elapsed


def test_the_table1_preset_is_valid_and_its_eta0_cells_are_the_ddim_samples():
    """presets/ddim_table1.yaml (Table 1 at 768 samples a cell on a CPU): valid over config.yaml, only the
    DDIM stage on, and every quality S also sampled by rule ddim_sample, so the eta = 0 column reuses
    those samples instead of drawing them again."""
    from snakemake.utils import update_config

    from diffusion_report.stages.ddim_cells import quality_variants, reused_cells

    cfg = load_yaml(ROOT / "config.yaml")
    update_config(cfg, load_yaml(ROOT / "presets" / "ddim_table1.yaml"))
    validate_config(cfg, SCHEMA, base_dir=ROOT)
    assert [cfg[k]["enabled"] for k in ("forward", "theory", "p2p", "ddim")] == [False, False, False, True]
    d = cfg["ddim"]
    assert d["num_samples"] >= 700 and not d["ddpm_baseline"]
    variants = quality_variants(d["quality"]["etas"], d["quality"]["sigma_hat"])
    for steps in d["quality"]["step_counts"]:
        assert reused_cells(d, steps, d["step_counts"], variants, T=cfg["schedule"]["T"]) == {"eta=0": f"ddim_{steps}"}, steps

