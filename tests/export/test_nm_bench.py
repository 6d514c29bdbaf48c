"""`python -m lottery.bench nm_e2e` end to end on a CPU: fake cuSPARSELt, wall-clock timing, tiny dims.

What the GPU run needs from this code is exercised here: every stage runs or fails in isolation, correct variants
are timed, a variant that raises (the Triton ones: no interpreter in this process) is recorded as failed and
not timed, the int8 paths run, the files are written, the targets are stated from the numbers.
"""

import csv
import math

import pytest
import torch

from lottery.bench import timing
from lottery.bench.__main__ import main as bench_main
from lottery.bench.e2e_nm import bench_e2e_variants, reference_logits
from lottery.bench.llama import LlamaDims
from lottery.bench.report_nm import target_lines

TINY = LlamaDims(64, 96, 2, 4, 4, 50, 1e-6, 1e4)


@pytest.fixture
def cpu_bench(monkeypatch, fake_cslt):
    import lottery.bench.dispatch as dispatch
    import lottery.bench.layers as layers
    import lottery.bench.llama as llama
    import lottery.export.semi as semi

    monkeypatch.setattr(timing, "DEVICE", "cpu")
    for mod in (dispatch, layers):  # one weight copy per point (no L2 to defeat; CPU half matmuls are slow)
        monkeypatch.setattr(mod, "L2_TARGET_BYTES", 1)
    monkeypatch.setattr(semi, "require_semi_structured_gpu", lambda device=None: torch.device("cpu"))
    monkeypatch.setattr(llama, "llama7b_dims", lambda layers=None: LlamaDims(**{**TINY.__dict__, "layers": layers}))
    return fake_cslt


def test_reference_logits_is_the_float32_model(cpu_bench):
    from lottery.bench.variants import build_variants

    m32 = build_variants(TINY, torch.float32, 1, 20, ("dense",), device="cpu")["dense"]
    m16 = build_variants(TINY, torch.bfloat16, 1, 20, ("dense",), device="cpu")["dense"]
    ids = torch.randint(0, TINY.vocab, (1, 12))
    torch.testing.assert_close(reference_logits(m32, ids), m32(ids, 0), atol=1e-5, rtol=1e-4)
    ref = reference_logits(m16, ids)
    assert ref.dtype == torch.float32
    # The bf16 model's own error against it is a real rounding error: nonzero, small.
    err = float((m16(ids, 0).float() - ref).norm() / ref.norm())
    assert 0 < err < 0.05


def test_e2e_variants_rows_checks_and_failures(cpu_bench):
    rows, checks = bench_e2e_variants(TINY, torch.float32, ("sparse_copy", "sparse_tt", "sparse_fm", "dense_fm",
                                                            "stub_fm"), prefill=16, decode_batches=(1, 3))
    by = {(r.variant, r.phase, r.batch): r for r in rows}
    assert len(rows) == 6 * 3  # dense added; prefill + two decode batches
    for v in ("dense", "sparse_copy", "sparse_fm", "dense_fm"):
        for key in [(v, "prefill", 1), (v, "decode", 1), (v, "decode", 3)]:
            r = by[key]
            assert r.ok and r.reps > 0 and math.isfinite(r.ms), key
    assert by[("sparse_fm", "prefill", 1)].rel_err_ref32 <= by[("sparse_fm", "prefill", 1)].tol
    # Triton in a process without the interpreter raises: recorded, not timed, the others unaffected.
    tt = by[("sparse_tt", "prefill", 1)]
    assert not tt.ok and tt.reps == 0 and math.isnan(tt.ms) and "TRITON_INTERPRET" in tt.note
    assert math.isfinite(by[("sparse_fm", "prefill", 1)].f_linear)
    assert {c.variant for c in checks} == {"dense", "sparse_copy", "sparse_tt", "sparse_fm", "dense_fm"}
    lines = target_lines(rows)
    assert len(lines) == 3 and all("target" in s for s in lines)


def test_e2e_past_deadline_records_untimed_rows(cpu_bench):
    rows, _ = bench_e2e_variants(TINY, torch.float32, ("sparse_fm",), prefill=16, decode_batches=(1,), deadline=0.0)
    assert rows and all(r.reps == 0 and "time budget" in r.note for r in rows)


def test_nm_e2e_command_on_cpu(cpu_bench, tmp_path, capsys):
    out = tmp_path / "o"
    rc = bench_main(["nm_e2e", "--out", str(out), "--layers", "1", "--prefill", "16", "--decode-batches", "1,2",
                     "--e2e-dtypes", "fp16", "--layer-shapes", "32x64", "--layer-tokens", "16,40",
                     "--layer-dtypes", "fp16,int8", "--skip", "kernels", "--budget-s", "120"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    names = {p.name for p in out.iterdir()}
    assert names == {"env.json", "dispatch.csv", "e2e.csv", "layers.csv", "TABLES.md", "nm_e2e.png"}
    assert len(names) <= 8  # what comes back from the device machine
    e2e = list(csv.DictReader(open(out / "e2e.csv")))
    assert {r["variant"] for r in e2e} >= {"dense", "sparse_fm", "dense_fm", "sparse_tok", "stub_fm"}
    fm = [r for r in e2e if r["variant"] == "sparse_fm"]
    assert all(r["ok"] == "True" and float(r["ms"]) > 0 for r in fm)
    layers = list(csv.DictReader(open(out / "layers.csv")))
    got = {(r["dtype"], r["variant"], r["tokens"]): r for r in layers}
    for v in ("dense", "dense_fm", "cslt_tuned", "cslt_tuned_xT", "cslt_Y_copy"):
        assert got[("float16", v, "40")]["ok"] == "True", v
    assert got[("float16", "cslt_Y_triton", "40")]["ok"] == "False"  # Triton needs the GPU (or the interpreter)
    for v in ("dense", "cslt_i8", "cslt_i8_xT", "cslt_i8_f16", "dense_fp16"):
        r = got[("int8", v, "16")]
        assert r["ok"] == "True" and float(r["rel_err"]) <= 1e-3, (v, r)
    assert got[("int8", "dense", "16")]["note"] == "X padded to 32 rows"
    dispatch = list(csv.DictReader(open(out / "dispatch.csv")))
    assert {r["layout"] for r in dispatch} == {"contig", "view"} and {r["tokens"] for r in dispatch} == {"8", "16"}
    tables = (out / "TABLES.md").read_text()
    assert "## End to end" in tables and "Against the targets" in tables and "kernels: " not in tables
    assert "| 32x64 | 40 | float16 |" in tables


def test_nm_e2e_refuses_without_cuda_and_bad_options(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_main(["nm_e2e", "--out", "o"]) == 2
    assert "compute capability >= 8.0" in capsys.readouterr().err
    for bad in (["--variants", "nope"], ["--e2e-dtypes", "int8"], ["--skip", "all"], ["--layer-shapes", "4x"]):
        with pytest.raises(SystemExit) as e:
            bench_main(["nm_e2e", *bad])
        assert e.value.code == 2


def test_e2e_variant_outside_tolerance_is_timed_and_marked(cpu_bench, monkeypatch):
    import fake_cslt

    monkeypatch.setattr(torch, "_cslt_sparse_mm", lambda *a, **k: fake_cslt.sparse_mm(*a, **k) * 1.05)
    rows, checks = bench_e2e_variants(TINY, torch.float32, ("sparse_fm",), prefill=16, decode_batches=(1,))
    fm = [r for r in rows if r.variant == "sparse_fm"]
    assert all(not r.ok and r.reps > 0 and "outside the correctness tolerance" in r.note for r in fm)
    assert all(r.ok for r in rows if r.variant == "dense")
    assert "NOT met" in "\n".join(target_lines(rows))  # no correct 2:4 variant: the target is not met
