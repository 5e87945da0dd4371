"""Mutation check of the graph passes and parity: does some test fail for each deliberate bug?

Each entry of :data:`MUTATIONS` is one cheap, meaningful source change (a flipped
comparison, a dropped check, an off-by-one, best kept instead of worst...) and the
tests that should catch it. The script copies the repository's tracked files
(``git ls-files``) into a temporary folder named ``tiedonnx`` and runs pytest there
with ``PYTHONPATH`` pointing at that folder's parent, so the tests import the
mutated copy, never the editable install; the working tree is never touched. It
first checks that the copy is what is imported, that the chosen tests pass on the
unmutated copy (a mutation "caught" by a test that fails anyway proves nothing),
and that a canary mutation is caught. Then, one at a time: apply, run the tests
(``python -m pytest -x -q -p no:cacheprovider``, per-mutation timeout), restore.

Usage (from the repository root, its venv active)::

    python scripts/mutation_check.py              # all 73
    python scripts/mutation_check.py --only int4_layout_most_padding parity_keeps_best
    python scripts/mutation_check.py --list       # ids, files and tests; runs nothing
    python scripts/mutation_check.py --check      # only that every snippet is found exactly once

Prints a table (id, file:line, caught / caught(timeout) / SURVIVED / pattern-not-found,
seconds) and ``N mutations: C caught, S survived, P not found``; exits 1 if any
mutation survived or was not found (a refactor that moves a snippet
shows up as not found: update the snippet). A mutation counts as caught only when
pytest exits 1 (tests failed), not on a collection or import error, or when it makes
the tests hang past its timeout (one does: the stack-pick pass then loops for ever).
Two mutations were tried and left out as equivalent; the comments in the table say why.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
G = "runtime/graph/"


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    #: Seconds; a mutant known to hang the pass gets a short one (a hang counts as caught).
    timeout: float | None = None


def M(id, file, find, replace, *tests, timeout=None):  # noqa: N802  (a table row)
    return Mutation(id, file, find, replace, tuple(tests), timeout)


RETIE, DUPS = "tests/test_retie.py", "tests/test_retie.py"
INT4, FP16, NAMES = "tests/test_int4.py", "tests/test_fp16.py", "tests/test_names.py"
FUSED = "tests/test_generate_fused.py"
LN, WV, SC, SP = ("tests/test_layer_norm.py", "tests/test_weight_views.py", "tests/test_shape_chains.py",
                  "tests/test_stack_pick.py")
LEAN, PAR = "tests/test_runtime_lean.py", "tests/test_parity_mismatches.py"
QUANT = "tests/test_quantize.py"
MUT = "tests/test_mutation_kills.py"

MUTATIONS = [
    # --- retie: the pass and its file writer
    M("retie_file_skips_checker", G + "retie.py",
      "    onnx.checker.check_model(out, full_check=True)\n    save_model(", "    save_model(",
      RETIE + "::test_retie_file_refuses_to_write_a_model_the_checker_rejects"),
    M("retie_transpose_perm_reversed", G + "retie.py",
      '[d.source], [d.copy], perm=list(d.perm)))', '[d.source], [d.copy], perm=list(d.perm)[::-1]))', RETIE),
    M("retie_cast_copy_not_transposed", G + "retie.py",
      "            if d.transposed:\n                nodes.append(helper.make_node(\"Transpose\", [cast_out]",
      "            if False:\n                nodes.append(helper.make_node(\"Transpose\", [cast_out]",
      "tests/test_inspect_untied.py::test_retied_mixed_file_counts_the_float16_copy_at_float16_size"),
    M("retie_identity_copy_not_renamed", G + "retie.py",
      'if d.relation == "identity"})', 'if d.relation == "transpose"})', RETIE),
    # --- duplicates: what counts as a copy
    M("dups_values_not_bits", G + "duplicates.py", "    return array.view(uint)\n", "    return array\n", DUPS),
    M("dups_same_values_any_order", G + "duplicates.py",
      "np.array_equal(_bits(np.transpose(src, perm)), _bits(dst))",
      "np.array_equal(np.sort(_bits(src), axis=None), np.sort(_bits(dst), axis=None))", DUPS),
    M("dups_small_tensors_count", G + "duplicates.py",
      "if v.nbytes >= min_bytes or (v.ndim", "if v.nbytes >= 0 or (v.ndim", DUPS, MUT),
    M("dups_overflowing_cast_accepted", G + "duplicates.py",
      "    if not np.array_equal(np.isfinite(cast), np.isfinite(array)):\n        return None",
      "    if False:\n        return None", MUT),
    M("dups_prefer_ignored", G + "duplicates.py",
      "names = sorted(names, key=lambda n: n not in prefer)", "names = list(names)",
      RETIE + "::test_prefer_keeps_named_initializer"),
    # --- fp16
    M("fp16_out_of_range_converted", G + "fp16.py",
      "return not finite.size or float(np.abs(finite).max()) <= FP16_MAX", "return True",
      FP16 + "::test_fp16_keeps_out_of_range_tensors_in_fp32_and_says_so"),
    M("fp16_overridable_converted", G + "fp16.py",
      "if init.data_type != onnx.TensorProto.FLOAT or init.name in overridable:",
      "if init.data_type != onnx.TensorProto.FLOAT:", FP16 + "::test_fp16_leaves_overridable_initializers_in_fp32"),
    M("fp16_tie_record_names_the_fp32_tensor", G + "fp16.py",
      'tie.initializer, tie.dtype, tie.source = converted[name], "float16", name',
      'tie.initializer, tie.dtype, tie.source = name, "float16", name', FP16),
    M("fp16_existing_fp16_constant_copied", G + "fp16.py",
      "        name = existing.get(key)\n", "        name = None\n", FP16, MUT),
    # --- int8
    M("int8_per_channel_quantizes_every_use", G + "int8.py",
      "exclude = per_channel_exclusions(work.graph, ties) + stacked_weight_matmuls(work.graph) if per_channel",
      "exclude = stacked_weight_matmuls(work.graph) if per_channel",
      QUANT + "::test_int8_stores_each_tie_once_and_runs_integer_kernels"),
    M("int8_full_range_not_recorded", G + "int8.py",
      '{FULL_RANGE_KEY: None if reduce_range else "true"}', "{FULL_RANGE_KEY: None}",
      "tests/test_lm_int8.py::test_reduce_range_sets_the_weight_magnitudes_and_is_recorded"),
    M("int8_equal_parameters_not_merged", G + "int8_retie.py",
      "if key in first and init.name not in keep:", "if False:", QUANT, MUT),
    # --- int4: layout, blocks, function, rounding search
    M("int4_layout_most_padding", G + "int4.py",
      "return (native, -(-k % block_size), layout == _IDENTITY)",
      "return (native, -k % block_size, layout == _IDENTITY)",
      INT4 + "::test_a_tie_between_equally_native_layouts_is_stored_with_the_least_padding"),
    M("int4_ir_version_not_raised", G + "int4.py",
      "model.ir_version = max(model.ir_version, 8)", "model.ir_version = model.ir_version",
      INT4 + "::test_int4_raises_the_ir_version_to_8_when_it_adds_a_function"),
    M("int4_layout_fewest_native_uses", G + "int4.py",
      "return max((_IDENTITY, _SWAP), key=score)", "return min((_IDENTITY, _SWAP), key=score)",
      INT4 + "::test_a_tie_between_equally_native_layouts_is_stored_with_the_least_padding",
      INT4 + "::test_ae_tie_is_one_4bit_tensor_read_by_both_uses"),
    M("int4_gather_padding_not_trimmed", G + "int4.py",
      "    if padded == k:\n        return\n", "    if True:\n        return\n",
      INT4 + "::test_lm_gather_and_output_projection_share_one_tensor"),
    M("int4_last_partial_block_dropped", G + "int4_blocks.py",
      "    blocks = -(-k // block_size)\n", "    blocks = k // block_size\n",
      INT4 + "::test_lm_gather_and_output_projection_share_one_tensor"),
    M("int4_faithfulness_check_skipped", G + "int4_blocks.py",
      "if worst > 1e-6 * max(1.0, float(np.abs(rows).max(initial=0.0))):", "if False:",
      INT4 + "::test_a_4bit_tensor_in_the_wrong_layout_is_caught"),
    M("int4_tiny_scales_stored_fp16", G + "int4_blocks.py",
      "magnitudes.min() < _FP16_MIN_NORMAL or ", "",
      INT4 + "::test_scales_below_float16_precision_stay_float32"),
    M("int4_function_nibbles_swapped", G + "int4_blocks.py",
      'mk("Concat", [f"{src}_lo1", f"{src}_hi1"]', 'mk("Concat", [f"{src}_hi1", f"{src}_lo1"]',
      INT4 + "::test_both_uses_read_bit_identical_weights",
      INT4 + "::test_ae_tie_is_one_4bit_tensor_read_by_both_uses"),
    M("int4_search_keeps_worse_candidate", G + "int4_search.py",
      "better = error < best[3]", "better = error > best[3]",
      "tests/test_quality.py::test_searched_blocks_are_closer_than_rtn_and_read_the_same_by_matmulnbits"),
    # (Not listed: counting the zero padding in the search's error weight is an equivalent mutant:
    # a padded zero is always exactly code == zero point, so it adds no error to any candidate.)
    M("int4_search_symmetric_scale_sign", G + "int4_search.py",
      "scale = peak * shrink / -8.0", "scale = peak * shrink / 8.0",
      "tests/test_quality.py::test_searched_blocks_are_closer_than_rtn_and_read_the_same_by_matmulnbits"),
    M("int4_search_nibbles_swapped", G + "int4_search.py",
      "packed = (codes[..., 0::2] | (codes[..., 1::2] << 4))", "packed = (codes[..., 1::2] | (codes[..., 0::2] << 4))",
      "tests/test_quality.py::test_searched_blocks_are_closer_than_rtn_and_read_the_same_by_matmulnbits"),
    # --- names
    M("names_reuse_a_kept_name", G + "names.py", "            while short in kept:", "            while False:",
      NAMES + "::test_subgraphs_follow_outer_renames_and_kept_names_are_never_reused"),
    M("names_outputs_renamed", G + "names.py",
      "kept = {v.name for v in graph.input} | {v.name for v in graph.output}", "kept = {v.name for v in graph.input}",
      NAMES + "::test_short_names_compute_the_same_and_keep_the_tie"),
    M("names_tie_record_not_renamed", G + "names.py",
      "            tie.initializer = rename(tie.initializer)", "            tie.initializer = tie.initializer",
      NAMES + "::test_short_names_compute_the_same_and_keep_the_tie"),
    M("names_kept_fp32_list_not_renamed", G + "names.py",
      "prop.value = json.dumps([rename(n) if isinstance(n, str) else n for n in names])",
      "prop.value = json.dumps(names)", NAMES + "::test_fp16_kept_list_follows_the_rename"),
    # --- ORT format
    M("ort_split_tie_not_reported", G + "ort_format.py",
      "        if copies != [proto.name]:", "        if proto.name not in copies:",
      "tests/test_ort_format.py::test_ort_file_keeps_one_copy_per_tie_and_matches_onnx", MUT),
    M("ort_identifier_not_checked", G + "ort_read.py",
      "    if data[4:8] != ORT_IDENTIFIER:\n", "    if False:\n",
      "tests/test_runtime_perf_structure.py::test_ort_files_are_checked_before_onnxruntime_reads_them"),
    # --- int8 default granularity and the lookup of a transposed int8 tie
    M("int8_default_ignores_lookup", G + "quantize.py",
      "    if not looked_up or stacked_weights(model.graph):", "    if stacked_weights(model.graph):",
      "tests/test_lm_int8.py::test_int8_stays_per_tensor_without_a_lookup_or_with_stacked_expert_weights"),
    M("int8_default_ignores_stacked_experts", G + "quantize.py",
      "    if not looked_up or stacked_weights(model.graph):", "    if not looked_up:",
      "tests/test_lm_int8.py::test_int8_stays_per_tensor_without_a_lookup_or_with_stacked_expert_weights"),
    M("lookup_axis_rows_not_moved_last", G + "lookup_axis.py",
      "perm=[*range(1, rank + 1), 0],", "perm=[0, *range(1, rank + 1)],", "tests/test_lm_int8.py"),
    M("lookup_axis_unknown_rank_rewritten", G + "lookup_axis.py",
      "        if rank is None:\n            logger.info(", "        if rank is None and False:\n            logger.info(",
      "tests/test_lm_int8.py::test_lookup_axis_pass_keeps_ids_of_any_rank_and_refuses_unknown_ranks"),
    M("tie_input_not_listed", G + "lookup_axis.py",
      "        if looked_up and projected:", "        if looked_up and projected and False:", "tests/test_lm_int8.py"),
    M("tie_input_without_a_lookup", G + "lookup_axis.py",
      "        if looked_up and projected:", "        if projected:", "tests/test_lm_int8.py"),
    # --- layer norm fusion
    M("layer_norm_fused_below_opset_17", G + "layer_norm.py",
      "if main_opset(model) < LAYER_NORM_OPSET or", "if main_opset(model) < 1 or", LN),
    M("layer_norm_epsilon_dropped", G + "layer_norm.py",
      'epsilon=parts["epsilon"])', "epsilon=1e-5)", LN, MUT),
    M("layer_norm_shared_parameter_reshaped", G + "layer_norm.py",
      "            if all(id(r) in gone for r in index.consumers(name)):", "            if True:", LN),
    # --- weight views
    M("weight_views_default_perm_identity", G + "weight_views.py",
      "return list(range(rank))[::-1]  # ONNX's default", "return list(range(rank))  # ONNX's default", WV, MUT),
    M("weight_views_shared_weight_folded", G + "weight_views.py",
      'readers.get(node.input[0] if node.input else "") != 1',
      'readers.get(node.input[0] if node.input else "", 0) < 1',
      WV),
    M("weight_views_second_copy_ignored", G + "weight_views.py",
      "            if value is None or _copy_elsewhere(value, node.input[0], inits):",
      "            if value is None:", WV),
    # --- shape chains
    M("shape_chains_output_reshape_dropped", G + "shape_chains.py",
      "rank != len(codes) or reshape.output[0] in self.outputs or", "rank != len(codes) or", SC),
    M("shape_chains_allowzero_ignored", G + "shape_chains.py",
      '    return any(a.name == "allowzero" and a.i for a in node.attribute)', "    return False", SC),
    M("shape_chains_gemm_alpha_ignored", G + "shape_chains.py",
      'if attrs.get("alpha", 1.0) != 1.0 or attrs.get("transA", 0):', 'if attrs.get("transA", 0):', SC),
    M("shape_chains_split_prefix_unchecked", G + "shape_chains.py",
      "if int(np.prod(tail)) == k and tuple(target[:j]) == tuple(dims[:j]):", "if int(np.prod(tail)) == k:", SC),
    # --- stack picks
    # (Not listed: accepting a wider slice, ``end >= start + 1``, is equivalent on valid graphs: the
    # Squeeze that follows needs a slice of one element, which a wider one is only at the stack's end.)
    M("stack_pick_other_axes_sliced", G + "stack_pick.py",
      "elif a == axis or start != 0 or end < _TO_END:", "elif a == axis:", SP, MUT),
    M("stack_pick_concat_axis_unchecked", G + "stack_pick.py",
      "if members is None or _axis(stack) != axes[0] or index >= len(members):",
      "if members is None or index >= len(members):", SP, MUT),
    M("stack_pick_output_renamed_away", G + "stack_pick.py",
      "            if node.output[0] in outputs:  # callers", "            if False:  # callers", SP,
      timeout=60),  # the pass loops for ever: the Squeeze it renamed away is found again
    M("stack_pick_unsqueeze_axis_unchecked", G + "stack_pick.py",
      'node.op_type != "Unsqueeze" or _ints(node, 1, "axes", constants) != [axis]',
      'node.op_type != "Unsqueeze"', SP, MUT),
    # --- graph index
    M("index_parent_op_type_unchecked", G + "index.py",
      "if parent is None or parent.op_type != op_type:", "if parent is None:",
      "tests/test_runtime_perf_structure.py::test_qgemm_pass_reads_the_int8_tie_directly",
      "tests/test_runtime_perf_structure.py::test_qgemm_pass_leaves_rank_3_inputs_alone", MUT),
    M("index_only_consumer_ignores_outputs", G + "index.py",
      "readers[0].op_type not in set(op_types) or name in index.outputs \\",
      "readers[0].op_type not in set(op_types) \\", LN),
    M("index_drop_node_keeps_reader", G + "index.py",
      "            self._readers.get(name, {}).pop(id(node), None)", "            pass",
      "tests/test_graph_passes.py::test_the_index_stays_equal_to_a_fresh_one_after_every_edit"),
    # --- lean runtime rewrite
    M("lean_trans_b_not_flipped", "runtime/lean.py",
      'helper.make_attribute("transB", 1 - trans_b)', 'helper.make_attribute("transB", 1)', LEAN, MUT),
    M("lean_rank3_lead_dims_off_by_one", "runtime/lean.py",
      '("end", [rank - 1])', '("end", [rank])', LEAN),
    M("lean_read_transpose_dropped", "runtime/lean.py",
      "            if node.output[0] not in used:", "            if True:", LEAN),
    M("lean_float_tie_pre_packed", "runtime/lean.py",
      "return not float_kept and not self.shared", "return not self.shared", LEAN, MUT),
    M("lean_float_tie_not_listed", "runtime/lean.py",
      "report.listed = _list_float_ties(graph, shared)", "report.listed = []", LEAN, LEAN),
    # --- parity (converter/parity_compare.py, converter/parity.py)
    M("parity_dtype_not_reported", "converter/parity_compare.py",
      "        if a.dtype != e.dtype:\n", "        if False:\n", PAR),
    M("parity_keeps_best_case", "converter/parity_compare.py",
      "if kept is None or f.max_abs >= kept.max_abs:", "if kept is None or f.max_abs <= kept.max_abs:", PAR),
    M("parity_extra_output_not_reported", "converter/parity_compare.py",
      "for n in sorted(set(actual) - set(expected))]", "for n in []]", PAR),
    M("parity_tolerance_not_scaled_by_peak", "converter/parity_compare.py",
      "(diff <= atol * scale + rtol", "(diff <= atol + rtol", PAR, MUT),
    M("parity_nan_never_matches", "converter/parity_compare.py",
      " | (np.isnan(a64) & np.isnan(e64))))", "))", PAR, MUT),
    M("parity_earlier_failure_forgotten", "converter/parity_compare.py",
      "ok=f.ok and (kept is None or kept.ok))", "ok=f.ok)", PAR, MUT),
    M("parity_shape_mismatch_also_compared", "converter/parity_compare.py",
      ' in Keras"))\n            continue\n', ' in Keras"))\n', PAR, MUT),
    M("parity_hint_on_any_values_mismatch", "converter/parity.py",
      "if problems and all(p.kind == VALUES for p in problems):",
      "if problems and any(p.kind == VALUES for p in problems):", PAR),
    # --- the fused generation decoder (converter/generation_fused.py) and int4 accuracy level
    M("fused_rotary_interleaved", "converter/generation_fused.py",
      "rotary_interleaved=0, scale=scale)", "rotary_interleaved=1, scale=scale)", FUSED),
    M("fused_gpt2_drops_output_bias", "converter/generation_fused.py",
      "h, residual = skip_layer_norm(g, attended, residual, gamma, beta,\n"
      "                                       g.constant(f\"attention_output_bias{i}\", _array(att._output_dense.bias)),",
      "h, residual = skip_layer_norm(g, attended, residual, gamma, beta,\n"
      "                                       None,", FUSED),
    M("fused_qkv_bias_ignored", "converter/generation_fused.py",
      "    if all(b is None for b in biases):\n        return qkv", "    if True:\n        return qkv", FUSED),
    # --- the shared cache buffer (runtime/generate.py, converter/generation_fused.py)
    M("shared_cache_not_written_in_place", "runtime/generate.py",
      "            if self.shared:  # the kernel writes", "            if False:  # the kernel writes", FUSED),
    M("one_token_ids_not_written", "runtime/generate.py",
      "            self._ids[:] = ids", "            pass", FUSED),
    M("fused_lengths_from_the_past", "converter/generation_fused.py",
      'total64 = g.op("Shape", [MASK], start=1, end=2)',
      'total64 = g.op("Add", [g.op("Shape", [kv_input_names(num_layers)[0]], start=2, end=3), '
      'g.op("Shape", [ids], start=1, end=2)])', FUSED),
    M("int4_accuracy_level_dropped", G + "int4.py",
      "    if accuracy_level:\n        for node in model.graph.node:", "    if False:\n        for node in model.graph.node:",
      INT4),
]

#: Must be caught, or the harness itself is broken (tests not reaching the copy).
CANARY = M("canary_retie_raises", G + "retie.py",
           "    out = copy_model(model)  # a pipeline's one copy",
           "    raise RuntimeError('mutation canary')", RETIE + "::test_folds_exact_copy_and_is_idempotent")


def _copy_repo(dest: Path) -> None:
    """The tracked files (as they are in the working tree) under ``dest``."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in filter(None, names.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(root.parent), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONSTARTUP", None)
    return env


def _locate(text: str, find: str) -> tuple[int, int]:
    """(count of ``find`` in ``text``, 1-based line of the first)."""
    at = text.find(find)
    return text.count(find), (text.count("\n", 0, at) + 1 if at >= 0 else 0)


def _pytest(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    try:
        done = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return done.returncode, done.stdout + done.stderr


def run_one(root: Path, m: Mutation, timeout: float) -> tuple[str, str, float]:
    """Apply ``m`` to the copy, run its tests, restore; return (status, file:line, seconds)."""
    if not m.tests:
        raise ValueError(f"mutation {m.id} names no tests (pytest would run the whole suite)")
    path = root / m.file
    original = path.read_text()
    count, line = _locate(original, m.find)
    where = f"{m.file}:{line}"
    if count != 1:
        return ("pattern-not-found" if count == 0 else f"pattern-found-{count}x"), where, 0.0
    start = time.monotonic()
    path.write_text(original.replace(m.find, m.replace))
    try:
        rc, out = _pytest(root, m.tests, m.timeout or timeout)
    finally:
        path.write_text(original)
    seconds = time.monotonic() - start
    if rc is None:  # the tests did not pass: a hang is a failure CI would report
        return "caught(timeout)", where, seconds
    if rc == 1:
        return "caught", where, seconds
    if rc == 0:
        return "SURVIVED", where, seconds
    return f"error(rc={rc})", where, seconds  # collection/usage error: not a test failing


def _preflight(root: Path, mutations: list[Mutation], timeout: float) -> None:
    """The copy is what is imported; the tests pass unmutated; the canary is caught."""
    probe = subprocess.run([sys.executable, "-c", "import sys, tiedonnx.runtime.graph.retie, "
                            "tiedonnx.converter.parity_compare; print(*(sys.modules[f'tiedonnx.{n}'].__file__ for n in "
                            "('runtime.graph.retie', 'converter.parity_compare')))"],
                           cwd=root, env=_env(root), capture_output=True, text=True)
    files = probe.stdout.split()
    print("imported:", *files)
    if probe.returncode or not files or not all(Path(f).resolve().is_relative_to(root.resolve()) for f in files):
        sys.exit(f"the tests would not import the copy under {root}: {probe.stdout}{probe.stderr}")
    tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    start = time.monotonic()
    rc, out = _pytest(root, tests, timeout * 4)
    print(f"baseline (unmutated copy, {len(tests)} test targets): rc={rc}, {time.monotonic() - start:.0f} s")
    if rc != 0:
        sys.exit(f"the chosen tests do not pass unmutated:\n{out[-4000:]}")
    status, where, seconds = run_one(root, CANARY, timeout)
    print(f"canary {CANARY.id} ({where}): {status}, {seconds:.1f} s")
    if status != "caught":
        sys.exit("the canary mutation was not caught: the harness is broken")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutation ids")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--check", action="store_true", help="only check every snippet is found once")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per mutation (default 240)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (not the canary)")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS if not args.only or m.id in args.only]
    unknown = set(args.only or ()) - {m.id for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation id(s): {sorted(unknown)}")
    if args.list:
        for m in mutations:
            print(f"{m.id:42} {m.file:36} {' '.join(m.tests)}")
        return 0
    if args.check:
        bad = [(m.id, _locate((REPO / m.file).read_text(), m.find)[0]) for m in [*mutations, CANARY]]
        bad = [(i, c) for i, c in bad if c != 1]
        for i, c in bad:
            print(f"{i}: snippet found {c} times")
        print(f"{len(mutations)} mutations, {len(bad)} snippets not found exactly once")
        return 1 if bad else 0
    with tempfile.TemporaryDirectory(prefix="tiedonnx-mut-") as tmp:
        root = Path(tmp) / "tiedonnx"
        _copy_repo(root)
        if args.no_baseline:
            status, _, _ = run_one(root, CANARY, args.timeout)
            if status != "caught":
                sys.exit(f"the canary mutation was not caught ({status}): the harness is broken")
        else:
            _preflight(root, mutations, args.timeout)
        print(f"{'id':42} {'where':40} {'result':18} {'s':>6}")
        results = []
        for m in mutations:
            status, where, seconds = run_one(root, m, args.timeout)
            results.append(status)
            print(f"{m.id:42} {where:40} {status:18} {seconds:6.1f}", flush=True)
    caught = sum(s.startswith("caught") for s in results)
    survived = results.count("SURVIVED")
    missing = len(results) - caught - survived
    print(f"{len(results)} mutations: {caught} caught, {survived} survived, {missing} not found"
          + ("" if missing == sum(s.startswith("pattern") for s in results) else " (or errored)"))
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
