import torch

from lightning_mf.models.masks import Layout, attention_mask, sink_shift


def _layout(chunks: list[int], clean: list[bool]) -> Layout:
    return Layout(torch.tensor(chunks), torch.tensor(clean))


def test_all_clean_is_block_causal() -> None:
    layout = _layout([0, 1, 1, 2, 2, 3], [True] * 6)
    mask = attention_mask(layout, layout)
    expected = torch.tensor([[int(k <= q) for k in [0, 1, 1, 2, 2, 3]] for q in [0, 1, 1, 2, 2, 3]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_teacher_forcing_noisy_chunk_sees_clean_past_and_itself_only() -> None:
    # [prefix ; clean 1..3 ; noisy 1..3]
    chunks = [0, 1, 2, 3, 1, 2, 3]
    clean = [True, True, True, True, False, False, False]
    mask = attention_mask(_layout(chunks, clean), _layout(chunks, clean))
    noisy2 = mask[5]  # noisy chunk 2
    assert noisy2.tolist() == [True, True, False, False, False, True, False]  # prefix, clean 1, itself
    clean2 = mask[2]
    assert clean2.tolist() == [True, True, True, False, False, False, False]  # clean context is block-causal
    assert mask[4].tolist() == [True, False, False, False, True, False, False]  # noisy 1: prefix + itself


def test_joint_layouts_share_chunk_indices_across_modalities() -> None:
    video, audio = _layout([0, 1, 1, 2, 2], [True] * 5), _layout([1, 1, 2, 2], [True] * 4)
    a_to_v = attention_mask(audio, video)
    assert a_to_v.tolist()[0] == [True, True, True, False, False]  # audio chunk 1 sees video chunks <= 1
    assert a_to_v.tolist()[2] == [True] * 5
    v_to_a = attention_mask(video, audio)
    assert not v_to_a[0].any()  # the video prefix has no audio to see


def test_window_keeps_the_last_chunks_and_the_sink_copy_of_each_querys_shift() -> None:
    layout = _layout(list(range(7)), [True] * 7)
    # keys: chunks 0..6, then copies of the sink moved by 1, 2 and 3 chunks
    keys = Layout.cat([layout, _layout([0, 0, 0], [True] * 3)])
    shift = torch.tensor([0] * 7 + [1, 2, 3])
    assert sink_shift(layout.chunk, 2).tolist() == [0, 0, 0, 0, 1, 2, 3] and not sink_shift(layout.chunk, None).any()
    mask = attention_mask(layout, keys, window=2, k_shift=shift)
    assert mask[6].tolist() == [False, False, False, False, True, True, True, False, False, True]  # 4, 5, itself, sink+3
    assert mask[4].tolist() == [False, False, True, True, True, False, False, True, False, False]  # 2, 3, itself, sink+1
    assert mask[2].tolist() == [True, True, True, False, False, False, False, False, False, False]  # within W + 1: real sink
    # without copies, a query beyond W + 1 sees no sink at all (never the unshifted one)
    assert attention_mask(layout, layout, window=2)[6].tolist() == [False, False, False, False, True, True, True]
