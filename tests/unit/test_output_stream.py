"""OutputStream: the per-token sink fast path keeps text in order whichever path each token takes."""

from service.engine.output_stream import OutputStream, RequestDelta


class ToggleSink:
    def __init__(self) -> None:
        self.accept = True
        self.taken: list[str] = []

    def __call__(self, text: str) -> bool:
        if self.accept:
            self.taken.append(text)
        return self.accept


async def test_a_declined_token_waits_for_the_reader_and_later_tokens_queue_behind_it() -> None:
    stream, sink = OutputStream(), ToggleSink()
    stream.attach_sink(sink)
    stream.put_token("a", 1, None)
    sink.accept = False
    stream.put_token("b", 2, None)  # declined: pending for the reader
    sink.accept = True
    stream.put_token("c", 3, None)  # the sink would take it, but "b" is pending, so it merges behind "b"
    assert sink.taken == ["a"]
    delta = await stream.get()
    assert (delta.text, delta.token_ids) == ("bc", [2, 3])
    stream.put_token("d", 4, None)  # nothing pending again: straight to the sink
    assert sink.taken == ["a", "d"]


async def test_prompt_logprobs_and_the_final_delta_always_go_to_the_reader() -> None:
    stream, sink = OutputStream(), ToggleSink()
    stream.attach_sink(sink)
    stream.put_token("x", 1, None, prompt_logprobs=[None])
    assert sink.taken == []
    assert (await stream.get()).prompt_logprobs == [None]
    stream.put(RequestDelta("end", [2], finish_reason="length"))
    final = await stream.get()
    assert final.finished and final.text == "end"
    stream.put_token("late", 3, None)  # after the end: dropped
    assert sink.taken == [] and stream.closed
