"""StopAgreement: the processes of a job stop at one agreed step (hand-simulated processes)."""

from __future__ import annotations

import signal

from maskjax.train.interrupt import StopAgreement


class _Signals:
    def __init__(self):
        self.signum = None

    @property
    def requested(self):
        return self.signum is not None


def test_single_process_stops_at_once():
    sig = _Signals()
    agreement = StopAgreement(sig, every=10, process_count=1, gather=lambda flag: 1 / 0)  # never gathers
    assert not agreement.should_stop(1)
    sig.signum = signal.SIGINT
    assert agreement.should_stop(2) and agreement.signum == signal.SIGINT


def test_two_processes_agree_at_the_next_boundary_whoever_was_signalled():
    signals = [_Signals(), _Signals()]
    gathers = []

    def gather_for(index):
        def gather(flag):
            gathers.append((index, flag))
            return [s.requested for s in signals]  # what the all-gather would return everywhere
        return gather

    every = 4
    agreements = [StopAgreement(signals[i], every, process_count=2, gather=gather_for(i)) for i in range(2)]
    decisions = {0: [], 1: []}
    for step in range(0, 13):
        if step == 5:
            signals[1].signum = signal.SIGTERM  # only process 1 is signalled
        for i, agreement in enumerate(agreements):
            decisions[i].append(agreement.should_stop(step))
            agreement.should_stop(step)  # asked twice at one step: still one all-gather
    assert decisions[0] == decisions[1]
    assert decisions[0].index(True) == 8  # the first multiple of 4 after the signal
    assert [index for index, _ in gathers].count(0) == 3  # process 0 gathered at steps 0, 4 and 8 only
    assert agreements[0].signum == signal.SIGTERM == agreements[1].signum  # a peer's stop reads as SIGTERM
