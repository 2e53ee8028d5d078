"""Certainty-forcing distillation: the loss pieces against hand values, the entropy-threshold decoder,
LoRA export, the self-generated data set, and the console scripts end to end on a tiny task."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import students
from distill.evaluation.threshold_choice import choose_threshold, state_reference
from distill.objectives.certainty import complementary_masks
from distill.data.sources import PathsDataModule
from distill.data.self_generated import (SelfGeneratedDataModule, complete_prefixes, generate, load_or_generate,
                                    to_tokens)
from students.entropy_threshold import EntropyThresholdSampler
from teachers import BlockwiseSampler, TransformerDenoiser, save_teacher
from teachers.samplers.selection import entropy as tempered_entropy
from teachers.sources.paths import PROMPT_LEN


# --- loss pieces ----------------------------------------------------------------------------------
def test_tempered_entropy_matches_hand_values():
    logits = torch.tensor([0.0, math.log(3.0)])
    # tau = 1: p = (1/4, 3/4); tau = 0.5: logits (0, 2 ln 3), p = (1/10, 9/10)
    assert tempered_entropy(logits, 1.0).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    assert tempered_entropy(logits, 0.5).item() == pytest.approx(-(0.1 * math.log(0.1) + 0.9 * math.log(0.9)), abs=1e-6)
    assert tempered_entropy(torch.zeros(5), 0.5).item() == pytest.approx(math.log(5), abs=1e-6)


@pytest.mark.parametrize("block_size", [32, 4, 5])
def test_complementary_masks_cover_each_active_block_token_exactly_once(block_size):
    answer_mask = (torch.arange(18) >= PROMPT_LEN)[None].expand(500, -1)
    first, second, later = complementary_masks(answer_mask, block_size, (0.0, 1.0), torch.Generator().manual_seed(0))
    covered = first.long() + second.long()
    assert covered.max() == 1 and not (first & second).any()
    assert not (covered.bool() & later).any() and not (covered.bool() | later)[:, :PROMPT_LEN].any()
    rank = torch.arange(16)
    for row in range(500):
        blocks = rank[covered[row, PROMPT_LEN:].bool()] // block_size
        assert len(blocks.unique()) == 1  # one active block per row ...
        active = int(blocks[0])
        expected = (rank // block_size) == active  # ... covered completely
        assert torch.equal(covered[row, PROMPT_LEN:].bool(), expected)
        assert torch.equal(later[row, PROMPT_LEN:], (rank // block_size) > active)
    if block_size >= 16:  # one block: every answer token supervised exactly once per pair
        assert torch.equal(covered.bool(), answer_mask)
    ratio = first.sum(1).float() / covered.sum(1)
    assert 0.4 < ratio.mean().item() < 0.6 and ratio.min() < 0.1 and ratio.max() > 0.9


# --- the decoder --------------------------------------------------------------------------------
class FixedDenoiser(nn.Module):
    """Returns the same logits (L, V) whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)
        self.vocab_size = logits.shape[-1]
        self.mask_id = self.vocab_size

    def forward(self, tokens):
        return self.logits.expand(tokens.shape[0], -1, -1)


def test_decoder_commits_exactly_the_low_entropy_positions_of_the_current_block():
    V, L = 5, 10
    logits = torch.zeros(L, V)  # uniform: entropy ln 5
    sure = [2, 4, 7]
    for i in sure:
        logits[i, i % V] = 30.0  # entropy ~ 0
    canvas = torch.cat([torch.tensor([[0, 1]]), torch.full((1, 8), V)], 1)
    sampler = EntropyThresholdSampler(threshold=0.1, block_size=4)  # blocks: positions 2-5, 6-9
    out = sampler.sample(FixedDenoiser(logits), prompt=canvas, return_trace=True)
    first = out.trace[0][0]
    assert [i for i in range(L) if first[i] != V and i >= PROMPT_LEN] == [2, 4]  # not 7: next block
    assert first[2] == 2 and first[4] == 4
    # afterwards one uniform position per step (the "at least one" rule), block by block
    assert out.nfe_per_row.tolist() == [3 + 4] and out.nfe == 7  # block 1: {2, 4}, 3, 5; block 2: 7, 6, 8, 9
    assert not (out.tokens == V).any()


@pytest.mark.parametrize("threshold, expected", [(0.0, 16), (100.0, 1)])
def test_decoder_always_progresses_and_finishes_within_answer_length_steps(threshold, expected):
    torch.manual_seed(0)
    net = TransformerDenoiser(vocab_size=7, seq_len=18, n_layer=1, d_model=16, n_head=2).eval()
    canvas = torch.cat([torch.randint(7, (6, 2)), torch.full((6, 16), 7)], 1)
    canvas[0, 5:9] = 3  # a row with fewer masked positions
    sampler = EntropyThresholdSampler(threshold=threshold, block_size=32)
    out = sampler.sample(net, 16, prompt=canvas, return_trace=True)
    masked = (canvas == 7).sum(1)
    assert not (out.tokens == 7).any()
    assert (out.nfe_per_row <= masked).all()
    assert out.nfe_per_row[1:].eq(expected).all() and out.nfe_per_row[0] == min(expected, int(masked[0]))
    previous = canvas
    for state in out.trace:  # each step commits >= 1 position in every unfinished row, none uncommitted
        unfinished = (previous == 7).any(1)
        revealed = ((previous == 7) & (state != 7)).sum(1)
        assert (revealed[unfinished] >= 1).all() and (revealed[~unfinished] == 0).all()
        assert ((previous != 7) <= (state == previous)).all()
        previous = state
    with pytest.raises(ValueError, match="picks its own step count"):
        sampler.sample(net, 4, prompt=canvas)


def test_decoder_stops_at_the_end_token():
    V, eos = 6, 5
    logits = torch.zeros(8, V)
    logits[3, eos] = 30.0  # certain end token at position 3
    canvas = torch.cat([torch.tensor([[0, 1]]), torch.full((1, 6), V)], 1)
    out = EntropyThresholdSampler(threshold=0.1, eos_id=eos).sample(FixedDenoiser(logits), prompt=canvas)
    assert out.tokens[0, 3:].tolist() == [eos] * 5 and out.nfe == 2  # step 1: eos fills 3..7; step 2: position 2


# --- LoRA export --------------------------------------------------------------------------------
@pytest.fixture
def tiny_teacher(tmp_path) -> nn.Module:
    torch.manual_seed(0)
    net = TransformerDenoiser(vocab_size=6, seq_len=6, n_layer=1, d_model=16, n_head=2, absolute_positions=True)
    from teachers.saved import load_teacher

    save_teacher(net, tmp_path / "teacher", data={"kind": "paths", "nodes": 6})
    return load_teacher(tmp_path / "teacher")


def test_lora_merged_export_gives_the_adapter_models_logits(tiny_teacher, tmp_path):
    student = EntropyThresholdSampler(threshold=0.2, lora={"r": 4, "alpha": 8, "target_modules": ["qkv", "proj", "mlp.0", "mlp.2", "head"]})
    student.init_denoiser(tiny_teacher)
    with torch.no_grad():
        for name, p in student.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)  # B = 0 at init: make the adapter change the model
    student.eval()
    ref = {"kind": "saved", "path": tiny_teacher.path, "sha256": tiny_teacher.sha256}
    students.save_student(student.merged(), tmp_path / "merged", teacher=ref)
    students.save_student(student.adapter(), tmp_path / "adapter", teacher=ref)
    x = torch.randint(0, 7, (5, 6))
    with torch.no_grad():
        expected = student.denoiser(x)
        merged = students.load(tmp_path / "merged")
        adapter = students.load(tmp_path / "adapter")
        assert not torch.allclose(expected, tiny_teacher(x), atol=1e-3)  # the adapter matters
        assert torch.allclose(merged.denoiser(x), expected, atol=1e-5)
        assert torch.allclose(adapter.network(tiny_teacher)(x), expected, atol=1e-5)
    saved = load_file(tmp_path / "adapter" / "model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # the adapter alone, not the base weights
    assert sum(v.numel() for v in saved.values()) == sum(
        p.numel() for p in student.denoiser.parameters() if p.requires_grad)
    assert "base_model" not in " ".join(load_file(tmp_path / "merged" / "model.safetensors"))
    canvas = torch.cat([torch.tensor([[0, 1], [2, 3]]), torch.full((2, 4), 6)], 1)
    a = merged.sample(tiny_teacher, prompt=canvas)
    b = adapter.sample(tiny_teacher, prompt=canvas)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.nfe_per_row, b.nfe_per_row)
    other = TransformerDenoiser(vocab_size=6, seq_len=6, n_layer=1, d_model=16, n_head=2, absolute_positions=True)
    other.sha256 = "0" * 64
    with pytest.raises(ValueError, match="adapter was trained on the teacher"):
        students.load(tmp_path / "adapter").sample(other, prompt=canvas)


# --- threshold choice on validation ------------------------------------------------------------
def table(*points):
    return [{"threshold": t, "accuracy": a, "nfe": n} for t, a, n in points]


def test_threshold_choice_is_the_largest_before_the_first_out_of_tolerance():
    rows = table((0.5, 0.97, 2.0), (0.01, 1.0, 15.0), (0.1, 0.995, 6.0), (0.2, 0.99, 4.0), (0.3, 1.0, 3.0))
    # 0.2 is 1 point below the teacher: outside 0.5 points, so the walk stops before it, and 0.3
    # (back at 100%, fewer NFE) is not taken: one failure at a smaller threshold is not skipped past
    chosen, within = choose_threshold(rows, reference=1.0, tolerance=0.005)
    assert within and chosen["threshold"] == 0.1
    chosen, within = choose_threshold(rows, reference=1.0, tolerance=0.01)  # 0.2 now inside
    assert within and chosen["threshold"] == 0.3
    chosen, within = choose_threshold(rows, reference=1.0, tolerance=0.05)
    assert within and chosen["threshold"] == 0.5
    # the reference is the teacher's accuracy, not 100%
    chosen, within = choose_threshold(rows, reference=0.99, tolerance=0.0)
    assert within and chosen["threshold"] == 0.3


def test_threshold_choice_without_any_row_in_tolerance_walks_against_the_students_own_accuracy():
    rows = table((0.01, 0.95, 15.0), (0.1, 0.97, 6.0), (0.2, 0.945, 4.0), (0.3, 0.93, 3.0), (0.5, 0.96, 2.0))
    chosen, within = choose_threshold(rows, reference=1.0, tolerance=0.01)
    assert not within and chosen["threshold"] == 0.2  # 0.3 is 2 points below the student's 95% at 0.01
    rows = [{**row, "state_accuracy": s} for row, s in zip(rows, (0.99, 0.99, 0.97, 0.99, 0.99))]
    chosen, within = choose_threshold(rows, 1.0, 0.01, state_reference(rows))
    assert not within and chosen["threshold"] == 0.1  # the states stop it before 0.2


def test_threshold_choice_also_stops_where_the_validation_states_lose_accuracy():
    rows = [{"threshold": t, "accuracy": 1.0, "nfe": n, "state_accuracy": s}
            for t, n, s in ((0.2, 3.0, 0.9895), (0.01, 9.0, 0.995), (0.1, 4.0, 0.9901), (0.3, 2.0, 0.995))]
    assert state_reference(rows) == 0.995  # the student's own, at its smallest threshold
    # every bare prompt is right at every threshold; on the states 0.1 loses 0.49 points, 0.2 0.55
    chosen, within = choose_threshold(rows, reference=1.0, tolerance=0.005, state_reference=state_reference(rows))
    assert within and chosen["threshold"] == 0.1
    chosen, within = choose_threshold(rows, reference=1.0, tolerance=0.005)  # without the states
    assert within and chosen["threshold"] == 0.3
    # the bare prompts still count: 0.1 out of tolerance there stops the walk at 0.01
    rows[2]["accuracy"] = 0.99
    chosen, within = choose_threshold(rows, 1.0, 0.005, state_reference(rows))
    assert within and chosen["threshold"] == 0.01
    assert state_reference(table((0.1, 1.0, 3.0))) is None


def test_validation_states_are_val_pair_walk_prefixes_with_the_rest_masked(small_paths, tmp_path):
    dm = SelfGeneratedDataModule(teacher_path=str(tmp_path), nodes=6, successors=2, answer_len=4, graph_seed=1,
                                 heldout_fraction=0.25, val_fraction=0.15, val_prefix_draws=5)
    mask_id, n = dm.vocab_size, dm.task.config.answer_len
    canvases, weights = dm.selection_states(mask_id)
    assert canvases.shape == (5 * len(dm.pairs["val"]), PROMPT_LEN + n)
    assert {tuple(p) for p in canvases[:, :PROMPT_LEN].tolist()} == {tuple(p) for p in dm.pairs["val"].tolist()}
    shown = (canvases[:, PROMPT_LEN:] != mask_id).sum(-1)
    assert shown.min() >= 1 and shown.max() <= n - 1
    answer = canvases[:, PROMPT_LEN:]
    assert torch.equal(answer != mask_id, torch.arange(n)[None] < shown[:, None])  # a prefix, then masks
    walk = torch.cat([canvases[:, :1], answer], 1)
    for row, k in zip(walk.tolist(), shown.tolist()):  # the prefix follows edges from start
        assert all(dm.task.edges[a, b] for a, b in zip(row[:k], row[1:k + 1]))
    assert torch.allclose(weights, dm.task.prompt_weights(canvases[:, :PROMPT_LEN]))
    assert torch.equal(dm.selection_states(mask_id)[0], canvases)  # the same states every time
    assert SelfGeneratedDataModule(teacher_path=str(tmp_path), nodes=6, successors=2, answer_len=4,
                                   graph_seed=1).selection_states(mask_id) is None


# --- self-generated data ------------------------------------------------------------------------
class TableDenoiser(nn.Module):
    """Predicts, with certainty, a fixed answer for each (start, goal): a stand-in teacher."""

    def __init__(self, table: torch.Tensor) -> None:  # (V, V, n)
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.table = table
        self.vocab_size = table.shape[0]
        self.mask_id = self.vocab_size
        self.sha256 = "f" * 64
        self.calls = 0

    def forward(self, tokens):
        self.calls += 1
        answers = self.table[tokens[:, 0], tokens[:, 1]]  # (B, n)
        logits = torch.full((*tokens.shape, self.vocab_size), -20.0)
        logits[:, PROMPT_LEN:].scatter_(-1, answers[..., None], 20.0)
        return logits


@pytest.fixture
def small_paths() -> PathsDataModule:
    return PathsDataModule(nodes=6, successors=2, answer_len=4, graph_seed=1, heldout_fraction=0.25, val_fraction=0.15)


def table_teacher(dm: PathsDataModule, wrong_every: int = 2) -> tuple[TableDenoiser, set]:
    """A valid answer for each reachable (start, goal) pair, but a broken walk for every
    `wrong_every`-th pair (0: none broken)."""
    n, V = dm.task.config.answer_len, dm.vocab_size
    pairs = (dm.task.powers[-1] > 0).nonzero()
    table = torch.zeros(V, V, n, dtype=torch.long)
    good = dm.task.sample_answers(pairs, torch.Generator().manual_seed(0))
    wrong = set()
    for i, (s, g) in enumerate(pairs.tolist()):
        table[s, g] = good[i]
        if wrong_every and i % wrong_every:
            table[s, g, -1] = (g + 1) % V  # misses the goal
            wrong.add((s, g))
    return TableDenoiser(table), wrong


def test_rejected_teacher_answers_never_enter_the_data_set(small_paths, tmp_path):
    teacher, wrong = table_teacher(small_paths)
    sampler = BlockwiseSampler(temperature=0.0, order="left_to_right")
    data, provenance, path = load_or_generate(teacher, small_paths, sampler, tmp_path)
    for name, split in (("train", "train"), ("validation", "val")):
        rows = to_tokens(data[name])
        assert small_paths.task.check(rows).all()
        kept = {tuple(p) for p in rows[:, :PROMPT_LEN].tolist()}
        decoded = {tuple(p) for p in small_paths.pairs[split].tolist()}
        assert kept == decoded - wrong
        counts = provenance["counts"][name]
        assert counts == {"prompts": len(decoded), "kept": len(decoded - wrong), "rejected": len(decoded & wrong)}
        assert counts["rejected"] > 0
    assert provenance["teacher_sha256"] == teacher.sha256 and provenance["sampler"]["temperature"] == 0.0
    assert provenance["prompt_split"] == small_paths.split_spec()
    prefixed, prefixed_provenance, prefixed_path = load_or_generate(teacher, small_paths, sampler, tmp_path, prefix_draws=3)
    assert prefixed_path != path  # prefix prompts are part of the key
    rows = to_tokens(prefixed["train_prefixed"])
    counts = prefixed_provenance["counts"]["train_prefixed"]
    assert small_paths.task.check(rows).all() and len(rows) == counts["kept"]
    assert counts["prompts"] == 3 * len(small_paths.pairs["train"]) and counts["rejected"] > 0
    calls = teacher.calls
    again, _, path2 = load_or_generate(teacher, small_paths, sampler, tmp_path)
    assert path2 == path and teacher.calls == calls  # reused from disk, not regenerated
    assert torch.equal(to_tokens(again["train"]), to_tokens(data["train"]))


def test_no_evaluation_prompt_appears_in_the_self_generated_data(small_paths):
    pairs = small_paths.pairs
    test = {tuple(p) for p in pairs["test"].tolist()}
    val = {tuple(p) for p in pairs["val"].tolist()}
    train = {tuple(p) for p in pairs["train"].tolist()}
    reachable = {tuple(p) for p in (small_paths.task.powers[-1] > 0).nonzero().tolist()}
    assert test and val and train and not (test & val) and not (test & train) and not (val & train)
    assert test | val | train == reachable
    teacher, _ = table_teacher(small_paths, wrong_every=0)
    data, _ = generate(teacher, small_paths.task, pairs, BlockwiseSampler(temperature=0.0))
    generated = {tuple(p) for name in ("train", "validation") for p in to_tokens(data[name])[:, :PROMPT_LEN].tolist()}
    assert generated == train | val and not generated & test
    data, _ = generate(teacher, small_paths.task, pairs, BlockwiseSampler(temperature=0.0), prefix_draws=4)
    prefixed = {tuple(p) for p in to_tokens(data["train_prefixed"])[:, :PROMPT_LEN].tolist()}
    assert prefixed and prefixed <= train  # prefix prompts come from training pairs only
    for seed in range(3):  # evaluation prompts, whatever data.seed, come from the test pairs only
        dm = PathsDataModule(nodes=6, successors=2, answer_len=4, graph_seed=1, heldout_fraction=0.25,
                             val_fraction=0.15, seed=seed)
        canvases = dm.benchmark(repeats=2).canvases(400, 6, torch.Generator())
        assert {tuple(p) for p in canvases[:, :PROMPT_LEN].tolist()} <= test


class WalkTeacher(TableDenoiser):
    """Completes any prefix with a walk to the goal: at each masked position, the first successor of
    the previous node from which the goal stays reachable in the steps left (one token per step)."""

    def __init__(self, dm: PathsDataModule) -> None:
        super().__init__(torch.zeros(dm.vocab_size, dm.vocab_size, dm.task.config.answer_len, dtype=torch.long))
        self.task = dm.task

    def forward(self, tokens):
        n, V = self.task.config.answer_len, self.vocab_size
        logits = torch.full((*tokens.shape, V), -20.0)
        for b in range(len(tokens)):
            masked = (tokens[b, PROMPT_LEN:] == self.mask_id).nonzero()
            if len(masked):
                t = int(masked[0])  # answer index of the leftmost masked position
                prev = int(tokens[b, 0] if t == 0 else tokens[b, PROMPT_LEN + t - 1])
                ok = self.task.edges[prev] & (self.task.powers[n - t - 1][:, tokens[b, 1]] > 0)
                logits[b, PROMPT_LEN + t, int(ok.nonzero()[0])] = 20.0
        return logits


def test_prefix_prompts_keep_their_prefix_and_the_teacher_completes_the_rest(small_paths):
    teacher = WalkTeacher(small_paths)
    pairs = small_paths.pairs["train"]
    tokens, prefix_len, ok = complete_prefixes(teacher, small_paths.task, pairs, 5, BlockwiseSampler(temperature=0.0),
                                               torch.Generator().manual_seed(0))
    n = small_paths.task.config.answer_len
    assert ok.all() and len(tokens) == 5 * len(pairs)
    assert torch.equal(tokens[:, :PROMPT_LEN], pairs.repeat_interleave(5, 0))
    assert prefix_len.min() >= 1 and prefix_len.max() <= n - 1 and len(prefix_len.unique()) > 1
    for row, k in zip(tokens, prefix_len.tolist()):  # the completion is the teacher's, token for token
        canvas = row.clone()
        canvas[PROMPT_LEN + k:] = teacher.mask_id
        again = BlockwiseSampler(temperature=0.0).sample(teacher, n - k, prompt=canvas[None]).tokens[0]
        assert torch.equal(again, row)


def test_training_batches_mix_whole_answers_and_prefix_prompts_whose_prefix_is_never_a_target(small_paths):
    from distill.data.self_generated import SelfGeneratedDataModule

    dm = SelfGeneratedDataModule(teacher_path="unused", nodes=6, successors=2, answer_len=4, graph_seed=1,
                                 heldout_fraction=0.25, val_fraction=0.15, batch_size=40, prefix_draws=3,
                                 prefix_fraction=0.25)
    dm.data, _ = generate(WalkTeacher(dm), dm.task, dm.pairs, BlockwiseSampler(temperature=0.0), prefix_draws=3)
    batch = next(iter(dm.train_dataloader()))
    tokens, answer_mask = batch["tokens"], batch["answer_mask"]
    whole = to_tokens(dm.data["train"])
    assert tokens.shape == answer_mask.shape == (40, 6)
    shown = (~answer_mask).sum(-1) - PROMPT_LEN  # answer tokens shown to the student
    plain, with_prefix = shown == 0, shown >= 1
    assert int(with_prefix.sum()) == 10 and int(plain.sum()) == 30  # 25% prefix prompts, mixed into the batch
    assert not with_prefix[:10].all() or not with_prefix[30:].all()  # not all at one end (ranks take slices)
    assert all((row == whole).all(-1).any() for row in tokens[plain])
    prefixed = {tuple(r) for r in to_tokens(dm.data["train_prefixed"]).tolist()}
    assert all(tuple(r) in prefixed for r in tokens[with_prefix].tolist())
    lengths = {}  # the same completed row can come from prefixes of several lengths
    for r, k in zip(to_tokens(dm.data["train_prefixed"]).tolist(), dm.data["train_prefixed"]["prefix_len"]):
        lengths.setdefault(tuple(r), set()).add(k)
    assert all(int(k) in lengths[tuple(r)] for r, k in zip(tokens[with_prefix].tolist(), shown[with_prefix]))


# --- console scripts end to end -----------------------------------------------------------------
TINY_PATHS = ["data.nodes=6", "data.successors=2", "data.answer_len=4", "data.graph_seed=1"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


def test_train_and_eval_a_certainty_student_end_to_end(tmp_path):
    proc = run("fewstep-train", "experiment=teacher_paths", *TINY_PATHS, "data.batch_size=64", "data.val_size=64",
               "objective.network.n_layer=1", "objective.network.d_model=32", "objective.network.n_head=2",
               "trainer.max_steps=150", "trainer.val_check_interval=150", "eval.steps=[4]", "eval.num_samples=64",
               "objective.val_samples=16", f"export_dir={tmp_path / 'teacher'}", f"hydra.run.dir={tmp_path / 'tr'}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    teacher = tmp_path / "teacher"
    proc = run("fewstep-train", "experiment=certainty_paths_lora", f"teacher.path={teacher}", *TINY_PATHS,
               "data.batch_size=16", f"data.cache_dir={tmp_path / 'cache'}", "student.lora.r=2", "trainer.max_steps=4",
               "trainer.val_check_interval=2", "eval.num_samples=64", "objective.thresholds=[0.01,1.0]",
               "objective.select_checkpoint=true", "data.prefix_draws=2", "data.val_prefix_draws=2",
               f"export_dir={tmp_path / 'student'}", f"hydra.run.dir={tmp_path / 'st'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "threshold chosen on" in proc.stdout
    meta = json.loads((tmp_path / "student" / "sampler.json").read_text())
    assert meta["class"] == "EntropyThresholdSampler" and meta["config"]["lora"] is None  # merged
    assert meta["config"]["threshold"] == meta["threshold_selection"]["chosen"] in (0.01, 1.0)
    assert [c["step"] for c in meta["threshold_selection"]["checkpoints"]] == [2, 4]
    selection = meta["threshold_selection"]  # the choice also saw 2 mid-answer states per val pair
    assert selection["states"] == 2 * selection["pairs"] > 0
    assert all(0 <= row["state_accuracy"] <= 1 for row in selection["rows"])
    assert selection["state_reference"] == selection["rows"][1]["state_accuracy"]  # the smallest threshold
    assert meta["self_generated_data"]["prefix_draws"] == 2 and "train_prefixed" in meta["self_generated_data"]["counts"]
    assert meta["prompt_split"] == {"heldout_fraction": 0.2, "val_fraction": 0.1, "split_seed": 0}
    assert meta["finetune"]["trainable_parameters"] > 0 and meta["finetune"]["lora"]["r"] == 2
    counts = meta["self_generated_data"]["counts"]["train"]
    assert counts["kept"] + counts["rejected"] == counts["prompts"] > 0
    out = tmp_path / "eval"
    proc = run("fewstep-eval", "data=paths", *TINY_PATHS, "teacher=saved", f"teacher.path={teacher}", "sampler=saved",
               f"sampler.path={tmp_path / 'student'}", "data.seed=3", "eval.num_samples=80", f"hydra.run.dir={out}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((out / "metrics.json").read_text())["rows"][0]
    assert row["sampler"] == "certainty" and row["steps"] == 4
    assert 1 <= row["nfe"] <= 4 and 0 <= row["accuracy"] <= 1
    assert row["tokens_per_forward"] == pytest.approx(4 / row["nfe"])
    samples = load_file(out / "samples.safetensors")  # accuracy and NFE recompute from the saved samples
    tokens, nfe = samples["certainty/steps=4"], samples["certainty/steps=4/nfe"]
    task = PathsDataModule(nodes=6, successors=2, answer_len=4, graph_seed=1).task
    assert torch.equal(load_file(out / "graph.safetensors")["transition"], task.transition)
    assert row["accuracy"] == pytest.approx(task.check(tokens).double().mean().item(), abs=1e-12)
    assert row["nfe"] == pytest.approx(nfe.mean().item(), abs=1e-12)
    assert len(nfe) == len(tokens) == 80 and nfe.min() >= 1 and nfe.max() <= 4
    proc = run("fewstep-eval", "data=paths", *TINY_PATHS, "data.heldout_fraction=0.3", "teacher=saved",
               f"teacher.path={teacher}", "sampler=saved", f"sampler.path={tmp_path / 'student'}",
               f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert proc.returncode == 2 and "another prompt split" in proc.stderr
