"""Model import: good archives of two families pass; hostile or unusable ones are refused."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from pipeline.configs.finetune import ModelImportConfig
from pipeline.configs.quantize import GptqOptions
from pipeline.import_model.stage import ModelImportInputs, run_model_import
from pipeline.quantize.gptq import run_gptq
from pipeline.types import PipelineError
from tests.pipeline.conftest import make_paths
from tests.pipeline.finetune_helpers import build_base


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {family: build_base(family, root / family) for family in ("llama", "qwen2")}


def tar_of(
    folder: Path, out: Path, *, gz: bool = True, extra: dict[str, bytes] | None = None
) -> Path:
    with tarfile.open(out, "w:gz" if gz else "w") as tar:
        tar.add(str(folder), arcname="my-model")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def zip_of(folder: Path, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for path in folder.rglob("*"):
            zf.write(path, str(path.relative_to(folder)))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


def do_import(archive: Path, root: Path, **limits: int) -> object:
    return run_model_import(
        ModelImportConfig(**limits), ModelImportInputs(archive), make_paths(root / "run")
    )


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_good_archives_import(bases: dict[str, Path], tmp_path: Path, family: str) -> None:
    archive = tar_of(bases[family], tmp_path / "m.tar.gz")
    result = do_import(archive, tmp_path)
    assert result.forward_checked and result.parameters > 0  # type: ignore[attr-defined]
    assert (result.model_dir / "config.json").exists()  # type: ignore[attr-defined]
    assert result.has_chat_template == (family == "qwen2")  # type: ignore[attr-defined]
    z = do_import(zip_of(bases[family], tmp_path / "m.zip"), tmp_path / "z")
    assert z.architecture.endswith("ForCausalLM")  # type: ignore[attr-defined]


def _hostile_tar(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def _info(name: str, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for key, value in kw.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_info("/etc/evil", size=1), "absolute"),
        (_info("../evil", size=1), "escapes"),
        (_info("a/../../evil", size=1), "escapes"),
        (_info("link", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "link"),
        (_info("hard", type=tarfile.LNKTYPE, linkname="config.json"), "link"),
        (_info("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), "special"),
        (_info("fifo", type=tarfile.FIFOTYPE), "special"),
    ],
)
def test_hostile_tar_members_are_refused(
    tmp_path: Path, member: tarfile.TarInfo, message: str
) -> None:
    archive = _hostile_tar(tmp_path / "bad.tar", member, b"x" if member.size else b"")
    with pytest.raises(PipelineError, match=message) as err:
        do_import(archive, tmp_path)
    assert err.value.code == "model.unsafe_archive"
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()
    assert not (tmp_path / "run" / "out" / "model").exists()


def test_zip_slip_and_zip_symlink_are_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "slip.zip", "w") as zf:
        zf.writestr("../../escaped.txt", "x")
    with pytest.raises(PipelineError, match="escapes"):
        do_import(tmp_path / "slip.zip", tmp_path)
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777) << 16  # a symlink entry
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(PipelineError, match="link"):
        do_import(tmp_path / "link.zip", tmp_path)


def test_size_bomb_is_stopped_while_streaming(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("zeros.txt")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(64 << 20)))
    with pytest.raises(PipelineError, match=r"inflates|beyond") as err:
        do_import(archive, tmp_path, max_extracted_bytes=1 << 30)
    assert err.value.code == "model.unsafe_archive"
    with pytest.raises(PipelineError, match="beyond"):
        do_import(archive, tmp_path / "2", max_extracted_bytes=1 << 20, max_ratio=1e6)


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickle executed",))


def test_pickles_are_refused_and_never_loaded(
    bases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = pickle.dumps(_Boom())
    for name in ("pytorch_model.bin", "weights.pt", "x.pkl"):
        archive = tar_of(
            bases["qwen2"], tmp_path / f"{name}.tar.gz", extra={f"my-model/{name}": payload}
        )
        with pytest.raises(PipelineError, match="pickle") as err:
            do_import(archive, tmp_path / name)
        assert err.value.code == "model.pickle_refused"
    # Renamed to look harmless: refused by content.
    archive = tar_of(bases["qwen2"], tmp_path / "hidden.tar.gz", extra={"my-model/notes": payload})
    with pytest.raises(PipelineError, match="pickled"):
        do_import(archive, tmp_path / "hidden")
    assert "pickle executed" not in capsys.readouterr().out


def test_unusable_models_are_refused(bases: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    import shutil

    shutil.copytree(bases["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    cases = {
        "model.remote_code": {**config, "auto_map": {"AutoModelForCausalLM": "x.Model"}},
        "model.unsupported_architecture": {
            **config,
            "architectures": ["BertModel"],
            "model_type": "bert",
        },
    }
    for code, bad in cases.items():
        (folder / "config.json").write_text(json.dumps(bad))
        with pytest.raises(PipelineError) as err:
            do_import(zip_of(folder, tmp_path / f"{code}.zip"), tmp_path / code)
        assert err.value.code == code
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    with pytest.raises(PipelineError) as err:
        do_import(zip_of(folder, tmp_path / "shape.zip"), tmp_path / "shape")
    assert err.value.code == "model.weights_mismatch"
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text("import os")
    with pytest.raises(PipelineError) as err:
        do_import(zip_of(folder, tmp_path / "code.zip"), tmp_path / "code")
    assert err.value.code == "model.remote_code"
    (folder / "modeling_evil.py").unlink()
    (folder / "model.safetensors").unlink()
    with pytest.raises(PipelineError) as err:
        do_import(zip_of(folder, tmp_path / "noweights.zip"), tmp_path / "nw")
    assert err.value.code == "model.no_weights"


# A quantization_config is decided at import: kept (GPTQ), dropped (stale) or refused.

_STALE_GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}


def _with_config(base: Path, folder: Path, **changes: Any) -> Path:
    shutil.copytree(base, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_a_stale_quantization_config_over_full_precision_weights_is_dropped(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    # A GGUF-derived export: full-precision safetensors under a config copied from a quantised
    # model. Loading it would try to dequantise float weights; a fine-tune failed at save.
    folder = _with_config(bases["llama"], tmp_path / "stale", quantization_config=_STALE_GPTQ)
    result = do_import(tar_of(folder, tmp_path / "m.tar.gz"), tmp_path)
    assert result.format == "huggingface" and result.quantization_dropped == "gptq"  # type: ignore[attr-defined]
    assert result.forward_checked  # type: ignore[attr-defined]
    stored = json.loads((result.model_dir / "config.json").read_text())  # type: ignore[attr-defined]
    assert "quantization_config" not in stored
    assert stored["hidden_size"] == 64  # the rest of the config is kept
    AutoModelForCausalLM.from_pretrained(str(result.model_dir))  # type: ignore[attr-defined]


def test_a_gptq_model_written_by_gptqmodel_is_kept_as_gptq(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    options = GptqOptions(bits=4, group_size=32, calibration_samples=8, calibration_length=16)
    generator = torch.Generator().manual_seed(0)
    windows = torch.randint(3, 200, (8, 16), generator=generator).tolist()
    gptq_dir = tmp_path / "gptq"
    gptq_dir.mkdir()
    run_gptq(bases["llama"], options, windows, gptq_dir, work_dir=tmp_path / "work", threads=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (bases["llama"] / name).exists() and not (gptq_dir / name).exists():
            shutil.copy(bases["llama"] / name, gptq_dir / name)
    result = do_import(tar_of(gptq_dir, tmp_path / "m.tar.gz"), tmp_path)
    assert result.format == "gptq" and result.quantization_dropped is None  # type: ignore[attr-defined]
    assert result.forward_checked  # type: ignore[attr-defined]
    stored = json.loads((result.model_dir / "config.json").read_text())  # type: ignore[attr-defined]
    assert stored["quantization_config"]["bits"] == 4


def test_quantised_weights_gristmill_does_not_read_are_refused(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    # bitsandbytes 8-bit: int8 weights with their SCB scales; nothing here can dequantise them.
    folder = _with_config(
        bases["llama"],
        tmp_path / "bnb",
        quantization_config={"quant_method": "bitsandbytes", "load_in_8bit": True},
    )
    weights = load_file(str(folder / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj"
    w = weights[f"{name}.weight"]
    scale = w.abs().amax(dim=1) / 127
    weights[f"{name}.weight"] = torch.round(w / scale[:, None]).to(torch.int8)
    weights[f"{name}.SCB"] = scale
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(PipelineError) as err:
        do_import(tar_of(folder, tmp_path / "m.tar.gz"), tmp_path)
    assert err.value.code == "model.unsupported_quantization"
    assert "'bitsandbytes'" in err.value.message and f"{name}.SCB" in err.value.message


def test_an_archive_of_empty_folders_is_refused_by_its_entry_count(tmp_path: Path) -> None:
    archive = tmp_path / "folders.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(100_000):
            tar.addfile(_info(f"d{i}", type=tarfile.DIRTYPE))
    tracemalloc.start()
    try:
        with pytest.raises(PipelineError, match="20000 entries") as err:
            do_import(archive, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.code == "model.archive_too_many_entries"
    assert peak < 64 << 20
    assert not (tmp_path / "run" / "out" / "model").exists()


def test_an_oversized_pax_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # The header declares 300 MB; the file holds one block of it.
    header = _info("././@PaxHeader", type=tarfile.XHDTYPE, size=300 << 20)
    archive = tmp_path / "pax.tar"
    archive.write_bytes(header.tobuf(format=tarfile.USTAR_FORMAT) + bytes(512))
    tracemalloc.start()
    try:
        with pytest.raises(PipelineError, match="314572800 bytes") as err:
            do_import(archive, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.code == "model.archive_header_too_large"
    assert peak < 16 << 20
    # A real, moderately large pax header over a lowered bound.
    big = tmp_path / "bigpax.tar"
    with tarfile.open(big, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info("a.txt", pax_headers={"comment": "x" * 8192}))
    with pytest.raises(PipelineError) as err:
        do_import(big, tmp_path / "big", max_header_bytes=4096)
    assert err.value.code == "model.archive_header_too_large"


def test_a_member_declaring_more_than_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    member = _info("my-model/model.safetensors", size=1 << 30)
    archive = tmp_path / "liar.tar"
    archive.write_bytes(member.tobuf() + b"x" * 512)
    with pytest.raises(PipelineError, match="declares 1073741824 bytes") as err:
        do_import(archive, tmp_path, max_extracted_bytes=1 << 20)
    assert err.value.code == "model.archive_too_large"
    assert not (tmp_path / "run" / "out" / "model").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_hidden_layers", 20_000), ("hidden_size", 1 << 40), ("vocab_size", 10**12)],
)
def test_config_sizes_past_the_limits_are_refused_before_a_model_is_built(
    bases: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, value: int
) -> None:
    folder = _with_config(bases["llama"], tmp_path / "huge", **{field: value})

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("transformers built a model from a refused config")

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", never)
    with pytest.raises(PipelineError, match=f"{field} is {value}") as err:
        do_import(tar_of(folder, tmp_path / "huge.tar.gz"), tmp_path)
    assert err.value.code == f"model.config_{field}_too_large"


@pytest.mark.parametrize("protocol", [0, 1])
@pytest.mark.parametrize("name", ["my-model/weights", "my-model/notes.txt"])
def test_old_protocol_pickles_are_refused_by_content(
    bases: dict[str, Path], tmp_path: Path, protocol: int, name: str
) -> None:
    payload = pickle.dumps(_Boom(), protocol=protocol)
    archive = tar_of(bases["qwen2"], tmp_path / "old.tar.gz", extra={name: payload})
    with pytest.raises(PipelineError, match="pickled") as err:
        do_import(archive, tmp_path)
    assert err.value.code == "model.pickle_refused"


def test_a_zip_written_with_zipfile_defaults_is_accepted(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    archive = tmp_path / "writestr.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(bases["llama"].rglob("*")):
            if path.is_file():
                zf.writestr(f"my-model/{path.relative_to(bases['llama'])}", path.read_bytes())
    result = do_import(archive, tmp_path)
    assert result.architecture == "LlamaForCausalLM"  # type: ignore[attr-defined]


def test_an_unexpected_error_while_checking_fails_with_a_stable_code(
    bases: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the tokenizer library crashed")

    monkeypatch.setattr("pipeline.parts.hf.load_tokenizer", broken)
    with pytest.raises(PipelineError, match=r"could not be checked \(RuntimeError\)") as err:
        do_import(tar_of(bases["llama"], tmp_path / "m.tar.gz"), tmp_path)
    assert err.value.code == "model.check_failed"
    assert "crashed" not in err.value.message  # a library's own text is for the server log


def test_a_zip_of_empty_folders_is_refused_before_its_directory_is_loaded(tmp_path: Path) -> None:
    archive = tmp_path / "folders.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(100_000):
            zf.writestr(f"d{i}/", b"")
    tracemalloc.start()
    try:
        with pytest.raises(PipelineError, match="100000") as err:
            do_import(archive, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.code == "model.archive_too_many_entries"
    assert peak < 16 << 20
