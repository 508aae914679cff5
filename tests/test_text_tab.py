"""Text tokens tab without a server: a click on a ranked row shows that token's own ablation."""
import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
from conftest import ROOT, SV, needs_embedded  # noqa: E402

from softvq_demo.analysis import ablation as A  # noqa: E402
from softvq_demo.analysis.codec import decode, encode  # noqa: E402
from softvq_demo.ui import tab_text  # noqa: E402
from softvq_demo.ui.inputs import InputError, model_image  # noqa: E402

IMAGE = str(ROOT / "assets" / "examples" / "house_textscenes_03.png")


@needs_embedded
def test_clicked_row_shows_that_tokens_ablation(local):
    out = tab_text.analyse(local, IMAGE, SV, "none", "10,40,118,90", "zero", 3, False)
    res_a, res_b = out[-2:]
    assert res_b is None and res_a is not None
    ranking = res_a.ranking()
    tok = local.tokenizer(SV)
    for row in (0, len(ranking) - 1):
        ablated, heat, amp, md = tab_text.ranked_token_view(res_a, row)
        token = ranking[row]
        assert f"Token **{token}**" in md and f"rank {row + 1} of" in md
        # the shown image is the model's reconstruction with exactly that token zeroed
        x, _, _ = model_image(IMAGE, tok.image_size)
        lat = encode(tok, x).latents[0]
        want = decode(tok, A.replace_tokens(lat, torch.zeros_like(lat), [token]))[0]
        got = torch.from_numpy(ablated[::2, ::2].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
        assert (got - want).abs().max() < 2 / 127.5
        assert heat.shape[1] > heat.shape[0]          # the colour bar sits to the right
        assert amp.shape == ablated.shape
    # a sorted table: the row's own token id wins over its position
    token = ranking[5]
    _, _, _, md = tab_text.ranked_token_view(res_a, 0, row_value=[6, token, 0.1])
    assert f"Token **{token}** (rank 6 of" in md
    with pytest.raises(InputError):
        tab_text.ranked_token_view(None, 0)
