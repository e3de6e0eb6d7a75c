"""Scheduler mechanics without a model: token budget, chunked prefill, seats, preemption, FCFS, no starvation."""
import pytest

from common.sampling import SamplingParams
from phase4_scheduler.kv_manager import KVCacheManager
from phase4_scheduler.request import Request, RequestStatus
from phase4_scheduler.scheduler import Scheduler


def req(rid, prompt_len, max_tokens=8):
    return Request(rid, list(range(3, 3 + prompt_len)), SamplingParams(max_tokens=max_tokens, temperature=0))


def run_step(sched):
    """What the engine does after the forward: advance computed tokens, sample (token 7) where a request is done."""
    plan = sched.schedule()
    for r, n in plan.scheduled:
        r.num_computed_tokens += n
        if r.num_computed_tokens == r.num_tokens:
            r.output_token_ids.append(7)
            if len(r.output_token_ids) >= r.params.max_tokens:
                sched.finish(r, RequestStatus.FINISHED_LENGTH)
    return plan


def summary(plan):
    return [(r.request_id, n) for r, n in plan.scheduled]


def test_budget_and_chunked_prefill():
    s = Scheduler(KVCacheManager(64, 4), max_num_batched_tokens=16)
    for i in range(3):
        s.add(req(f"r{i}", 10))
    assert summary(run_step(s)) == [("r0", 10), ("r1", 6)]  # r1's prompt is cut to the remaining budget
    r1 = s.running[1]
    assert r1.num_computed_tokens == 6 and not r1.output_token_ids  # a partial prefill samples nothing


def test_budget_exact_second_step():
    s = Scheduler(KVCacheManager(64, 4), max_num_batched_tokens=16)
    for i in range(3):
        s.add(req(f"r{i}", 10))
    run_step(s)
    plan = run_step(s)  # r0 decodes (1), r1 finishes its prompt (4), r2 gets its whole prompt (10 <= 11 left)
    assert summary(plan) == [("r0", 1), ("r1", 4), ("r2", 10)]
    assert plan.num_batched_tokens == 15 <= s.max_num_batched_tokens


def test_no_chunking_when_disabled():
    s = Scheduler(KVCacheManager(64, 4), max_num_batched_tokens=16, enable_chunked_prefill=False)
    for i in range(3):
        s.add(req(f"r{i}", 10))
    assert summary(run_step(s)) == [("r0", 10)]  # r1 does not fit whole, and nobody overtakes it


def test_max_num_seqs():
    s = Scheduler(KVCacheManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(4):
        s.add(req(f"r{i}", 3))
    assert [r for r, _ in summary(run_step(s))] == ["r0", "r1"]
    assert len(s.running) == 2 and len(s.waiting) == 2


def test_preempts_newest_and_requeues_at_front():
    kv = KVCacheManager(6, 4)  # 24 token slots
    s = Scheduler(kv, max_num_batched_tokens=100)
    for i in range(3):
        s.add(req(f"r{i}", 8, max_tokens=20))  # 2 blocks each: the pool is full after the prefill
    run_step(s)
    assert kv.num_free_blocks == 0
    s.add(req("late", 2))
    plan = run_step(s)  # every decode needs a new block: the newest (r2) is preempted, its 2 blocks serve r0, r1
    assert [r.request_id for r in plan.preempted] == ["r2"]
    assert summary(plan) == [("r0", 1), ("r1", 1)]  # and nobody is admitted in a step that preempted
    assert [r.request_id for r in s.waiting] == ["r2", "late"]  # back at the FRONT, ahead of later arrivals
    r2 = s.waiting[0]
    assert r2.status is RequestStatus.PREEMPTED and r2.num_computed_tokens == 0 and r2.num_preemptions == 1
    assert not kv.has("r2") and kv.num_free_blocks == 0


def test_several_preempted_keep_arrival_order():
    kv = KVCacheManager(8, 4)
    s = Scheduler(kv, max_num_batched_tokens=100)
    for i in range(4):
        s.add(req(f"r{i}", 8, max_tokens=20))  # 8 blocks: full
    run_step(s)
    s.add(req("late", 2))
    plan = run_step(s)  # r0 and r1 need one block each: r3 frees 2; r2 then needs one: r2 preempts itself
    assert [r.request_id for r in plan.preempted] == ["r3", "r2"]
    assert [r.request_id for r in s.waiting] == ["r2", "r3", "late"]


def test_preempted_resume_before_later_arrivals_and_all_finish():
    kv = KVCacheManager(6, 4)
    s = Scheduler(kv, max_num_batched_tokens=100)
    reqs = [req(f"r{i}", 8, max_tokens=12) for i in range(3)]  # 20 tokens = 5 blocks each at the end
    for r in reqs:
        s.add(r)
    run_step(s)
    run_step(s)  # r2 preempted
    late = req("late", 2, max_tokens=12)
    s.add(late)
    admissions = []
    for _ in range(200):
        plan = run_step(s)
        admissions += [r.request_id for r, n in plan.scheduled if r.num_computed_tokens == n]  # started from 0
        if not s.num_unfinished:
            break
    assert admissions.index("r2") < admissions.index("late")  # the preempted request resumes first
    assert all(len(r.output_token_ids) == 12 for r in reqs + [late])  # outputs survive preemption (recomputed)
    assert s.num_preemptions >= 2 and kv.num_free_blocks == kv.num_total_blocks


def test_no_starvation_head_of_line():
    kv = KVCacheManager(4, 4)  # 16 slots
    s = Scheduler(kv, max_num_batched_tokens=100)
    s.add(req("a", 8, max_tokens=3))
    run_step(s)  # a holds 2 blocks (3 after its first decode)
    s.add(req("big", 10, max_tokens=2))  # needs 3 blocks: must wait for a
    s.add(req("small", 2, max_tokens=2))  # would fit now, but must not overtake "big"
    admitted = []
    for _ in range(20):
        plan = run_step(s)
        admitted += [r.request_id for r, n in plan.scheduled if r.request_id not in admitted and r.request_id != "a"]
        if not s.waiting and not s.running:
            break
    assert admitted == ["big", "small"]
    assert kv.num_free_blocks == kv.num_total_blocks


def test_bad_limits():
    with pytest.raises(ValueError, match="max_num_seqs"):
        Scheduler(KVCacheManager(4, 4), max_num_seqs=0)
    with pytest.raises(ValueError, match="at least one block"):
        KVCacheManager(0, 16)


def test_kv_manager_accounting():
    kv = KVCacheManager(10, 4)
    assert kv.can_allocate("x", 40) and not kv.can_allocate("x", 41)
    kv.allocate("x", 5)
    assert kv.block_table("x") and len(kv.block_table("x")) == 2 and kv.num_free_blocks == 8
    assert kv.num_blocks_needed("x", 3) == 0 and kv.num_blocks_needed("x", 4) == 1
    assert kv.slot_mapping(["x"], [2]) == [kv.block_table("x")[0] * 4 + 3, kv.block_table("x")[1] * 4 + 0]
    assert kv.usage == pytest.approx(0.2)
    assert kv.free("x") == 2 and kv.free("x") == 0 and kv.num_free_blocks == 10
    assert "KVCacheManager" in repr(kv)


def test_admission_batching_waits_for_free_seats_then_fills_them():
    from phase4_scheduler.kv_manager import KVCacheManager
    from phase4_scheduler.request import Request
    from phase4_scheduler.scheduler import Scheduler
    from common.sampling import SamplingParams

    kv = KVCacheManager(256, 4)
    s = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=1000, admit_min_free_seats=4, max_admit_delay_steps=3)
    reqs = [Request(f"r{i}", [1, 2, 3], SamplingParams(max_tokens=50)) for i in range(14)]
    for r in reqs:
        s.add(r)
    out = s.schedule()  # nothing running: admission is open, 8 seats fill
    assert len(out.scheduled) == 8 and len(s.waiting) == 6
    for r, n in out.scheduled:
        r.num_computed_tokens += n
        r.output_token_ids.append(7)
    s.finish_running([(reqs[0], None), (reqs[1], None)])  # 2 free seats < 4: the queue waits
    plans = []
    for _ in range(4):
        out = s.schedule()
        plans.append(sum(1 for r, _ in out.scheduled if r.request_id in {f"r{i}" for i in range(8, 14)}))
        for r, n in out.scheduled:
            r.num_computed_tokens += n
            r.output_token_ids.append(7)
    assert plans[:3] == [0, 0, 0] and plans[3] == 2  # held 3 steps (max_admit_delay_steps), then both seats refill
    s.finish_running([(reqs[2], None), (reqs[3], None), (reqs[4], None), (reqs[5], None)])
    out = s.schedule()  # 4 free seats >= 4: admitted at once, all four
    assert sum(1 for r, _ in out.scheduled if r.status.name == "RUNNING" and r.num_computed_tokens == 0) == 4


def test_admission_batching_rejects_bad_values():
    from phase4_scheduler.kv_manager import KVCacheManager
    from phase4_scheduler.scheduler import Scheduler

    with pytest.raises(ValueError, match="admit_min_free_seats"):
        Scheduler(KVCacheManager(8, 4), max_num_seqs=4, admit_min_free_seats=5)
