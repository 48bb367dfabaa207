"""The SyncNet contrastive loss (objectives/contrastive.py) by value."""

import torch

from lightning_mf.objectives.contrastive import sync_contrastive_loss


def test_the_sync_contrastive_loss_by_hand_with_its_defaults_and_on_its_inputs_device() -> None:
    """Defaults: offsets -6..6 of the same clip, temperature 0.1, no other-clip negatives (the measured recipe);
    candidates that fall off the clip do not count."""
    torch.manual_seed(0)
    video, audio = (torch.nn.functional.normalize(torch.randn(2, 9, 5), dim=-1) for _ in range(2))
    audio[:, :3] = video[:, :3]  # the first frames are won by the aligned pair
    loss, accuracy = sync_contrastive_loss(video, audio)
    terms, wins = [], []
    for b in range(2):
        for t in range(9):
            offsets = [o for o in range(-6, 7) if 0 <= t + o < 9]
            logits = torch.stack([(video[b, t] * audio[b, t + o]).sum() / 0.1 for o in offsets])
            aligned = offsets.index(0)
            terms.append(torch.logsumexp(logits, 0) - logits[aligned])
            wins.append(float(logits.argmax() == aligned))
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert accuracy == sum(wins) / len(wins) and 0 < accuracy < 1
    assert sync_contrastive_loss(video.to("meta"), audio.to("meta"))[0].device.type == "meta"


def test_other_clips_at_the_same_time_are_extra_negatives() -> None:
    torch.manual_seed(1)
    video, audio = (torch.nn.functional.normalize(torch.randn(3, 4, 5), dim=-1) for _ in range(2))
    loss, _ = sync_contrastive_loss(video, audio, max_shift=1, temperature=0.5, other_clips=True)
    terms = []
    for b in range(3):
        for t in range(4):
            shifts = [(video[b, t] * audio[b, t + o]).sum() for o in (-1, 0, 1) if 0 <= t + o < 4]
            others = [(video[b, t] * audio[c, t]).sum() for c in range(3) if c != b]
            logits = torch.stack(shifts + others) / 0.5
            terms.append(torch.logsumexp(logits, 0) - (video[b, t] * audio[b, t]).sum() / 0.5)
    torch.testing.assert_close(loss, torch.stack(terms).mean())
