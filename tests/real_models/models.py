"""Real library models (torchvision, timm, transformers), built from constructors with random
weights, each with the batch it is diagnosed on.

Every factory takes a seed, seeds the global generator for the weights
(``torch.manual_seed(seed)``) and draws its data from a private ``torch.Generator``. The
healthy ones are stock models; each ``BUGS`` entry plants one bug in one of them and names
the check that must catch it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import nndiag
from tests.real_models import _torchvision  # noqa: F401  (before torchvision, timm, transformers)

CLASSES = 10
IMAGE_BATCH, IMAGE_SIZE = 16, 32
TEXT_BATCH, SEQ, VOCAB = 16, 16, 128


# -- data ----------------------------------------------------------------------------------
def _images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2000 + seed)
    x = torch.randn(IMAGE_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return x, torch.randint(0, CLASSES, (IMAGE_BATCH,), generator=g)


def _tokens(seed: int, length: int = SEQ) -> torch.Tensor:
    g = torch.Generator().manual_seed(3000 + seed)
    return torch.randint(0, VOCAB, (TEXT_BATCH, length), generator=g)


def _next_tokens(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = _tokens(seed, SEQ + 1)
    return ids[:, :-1], ids[:, 1:]


def token_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every token of (N, T, V) logits against (N, T) targets."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


# -- wrappers: input_ids in, logits out ------------------------------------------------------
class Logits(nn.Module):
    """A transformers model called on ``input_ids``, returning its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


class Seq2SeqLogits(Logits):
    """An encoder-decoder fed its own input, shifted right, as decoder input (a copy task)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        decoder_input_ids = self.model._shift_right(input_ids)
        return self.model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits


class BatchSoftmax(nn.Module):
    """Bug: the logits are normalised over the batch axis, mixing the samples."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(input_ids), dim=0)


def _detach_output(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output.detach()


def _center_over_batch(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output - output.mean(dim=0, keepdim=True)


# -- torchvision -----------------------------------------------------------------------------
def _vision(name: str, seed: int) -> nn.Module:
    import torchvision.models

    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None, num_classes=CLASSES)


def resnet18(seed: int = 0) -> nndiag.Subject:
    return nndiag.Subject(_vision("resnet18", seed), _images(seed), name="resnet18")


def mobilenet_v3_small(seed: int = 0) -> nndiag.Subject:
    model = _vision("mobilenet_v3_small", seed)
    return nndiag.Subject(model, _images(seed), name="mobilenet_v3_small")


def efficientnet_b0(seed: int = 0) -> nndiag.Subject:
    model = _vision("efficientnet_b0", seed)
    return nndiag.Subject(model, _images(seed), name="efficientnet_b0")


def vgg11_bn(seed: int = 0) -> nndiag.Subject:
    """133M parameters, 0.9 s a training step on 2 cores: for the cost and memory
    benchmarks, not the test run."""
    return nndiag.Subject(_vision("vgg11_bn", seed), _images(seed), name="vgg11_bn")


def squeezenet1_1(seed: int = 0) -> nndiag.Subject:
    model = _vision("squeezenet1_1", seed)
    return nndiag.Subject(model, _images(seed), name="squeezenet1_1")


# -- timm ------------------------------------------------------------------------------------
def _timm(name: str, seed: int, **kwargs: Any) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)


def resnet10t(seed: int = 0) -> nndiag.Subject:
    return nndiag.Subject(_timm("resnet10t", seed), _images(seed), name="timm_resnet10t")


def vit_tiny(seed: int = 0) -> nndiag.Subject:
    model = _timm("vit_tiny_patch16_224", seed, img_size=IMAGE_SIZE, patch_size=4)
    return nndiag.Subject(model, _images(seed), name="timm_vit_tiny")


# -- transformers ----------------------------------------------------------------------------
def _gpt2(seed: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config)


def _llama(seed: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


def gpt2(seed: int = 0) -> nndiag.Subject:
    model = Logits(_gpt2(seed))
    return nndiag.Subject(model, _next_tokens(seed), loss=token_loss, name="gpt2")


def gpt2_unwrapped(seed: int = 0) -> nndiag.Subject:
    """The transformers model itself: called on ``input_ids``, it returns a ModelOutput."""
    return nndiag.Subject(_gpt2(seed), _next_tokens(seed), name="gpt2_unwrapped")


def llama(seed: int = 0) -> nndiag.Subject:
    model = Logits(_llama(seed))
    return nndiag.Subject(model, _next_tokens(seed), loss=token_loss, name="llama")


def _bert_config() -> Any:
    from transformers import BertConfig

    return BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        num_labels=CLASSES,
        attn_implementation="eager",
    )


def bert(seed: int = 0) -> nndiag.Subject:
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    config = _bert_config()
    g = torch.Generator().manual_seed(4000 + seed)
    labels = torch.randint(0, CLASSES, (TEXT_BATCH,), generator=g)
    model = Logits(BertForSequenceClassification(config))
    return nndiag.Subject(model, (_tokens(seed), labels), name="bert")


def t5(seed: int = 0) -> nndiag.Subject:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        vocab_size=VOCAB,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        use_cache=False,
        attn_implementation="eager",
    )
    ids = _tokens(seed)  # the task: the source reversed (targets equal to it are a leak)
    model = Seq2SeqLogits(T5ForConditionalGeneration(config))
    return nndiag.Subject(model, (ids, ids.flip(1)), loss=token_loss, name="t5")


# -- planted bugs ----------------------------------------------------------------------------
def resnet18_hot_head(seed: int = 0) -> nndiag.Subject:
    """The classifier's weights ×30: over-confident scores at init."""
    model = _vision("resnet18", seed)
    with torch.no_grad():
        model.fc.weight.mul_(30)
    return nndiag.Subject(model, _images(seed), name="resnet18_hot_head")


def squeezenet_detached(seed: int = 0) -> nndiag.Subject:
    """A forward hook returns a middle Fire block's output ``.detach()``ed: the layers
    below it get no gradient, though the loss depends on them."""
    model = _vision("squeezenet1_1", seed)
    model.features[6].register_forward_hook(_detach_output)
    return nndiag.Subject(model, _images(seed), name="squeezenet_detached")


class _OnePercentGrad(torch.autograd.Function):
    """Identity forward; the backward gives a gradient 1% too large."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
        return w.view_as(w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * 1.01


class _OnePercent(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _OnePercentGrad.apply(w)


def _one_percent(model: nn.Module, layer: str) -> nn.Module:
    """One tensor's gradient 1% off (torch's gradcheck fast mode misses this on an MLP)."""
    from torch.nn.utils import parametrize

    parametrize.register_parametrization(
        dict(model.named_modules())[layer], "weight", _OnePercent()
    )
    return model


def squeezenet_grad_one_percent(seed: int = 0) -> nndiag.Subject:
    model = _one_percent(_vision("squeezenet1_1", seed), "features.3.squeeze")
    return nndiag.Subject(model, _images(seed), name="squeezenet_grad_one_percent")


def llama_grad_one_percent(seed: int = 0) -> nndiag.Subject:
    model = Logits(_one_percent(_llama(seed), "model.layers.1.mlp.up_proj"))
    return nndiag.Subject(model, _next_tokens(seed), loss=token_loss, name="llama_grad_1pct")


def vit_tiny_batch_centered(seed: int = 0) -> nndiag.Subject:
    """A forward hook subtracts the batch mean from the middle transformer block's output."""
    model = _timm("vit_tiny_patch16_224", seed, img_size=IMAGE_SIZE, patch_size=4)
    model.blocks[6].register_forward_hook(_center_over_batch)
    return nndiag.Subject(model, _images(seed), name="timm_vit_tiny_batch_centered")


def vit_tiny_detached(seed: int = 0) -> nndiag.Subject:
    """A forward hook detaches the output of the middle transformer block (88 of 152
    parameter tensors get no gradient)."""
    model = _timm("vit_tiny_patch16_224", seed, img_size=IMAGE_SIZE, patch_size=4)
    model.blocks[6].register_forward_hook(_detach_output)
    return nndiag.Subject(model, _images(seed), name="timm_vit_tiny_detached")


def gpt2_batch_softmax(seed: int = 0) -> nndiag.Subject:
    """The logits go through ``softmax(dim=0)``: each sample's output depends on the others."""
    model = BatchSoftmax(Logits(_gpt2(seed)))
    return nndiag.Subject(model, _next_tokens(seed), loss=token_loss, name="gpt2_batch_softmax")


def bert_as_lm(seed: int = 0) -> nndiag.Subject:
    """A bidirectional encoder (BERT's masked-LM head) trained on next-token targets."""
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    model = Logits(BertForMaskedLM(_bert_config()))
    return nndiag.Subject(model, _next_tokens(seed), loss=token_loss, name="bert_as_lm")


def _peek_ahead(module: nn.Module, args: Any, output: Any) -> Any:
    hidden = output[0] if isinstance(output, tuple) else output
    peeked = hidden + 0.5 * hidden.roll(-1, dims=1)  # position t reads t+1
    return (peeked, *output[1:]) if isinstance(output, tuple) else peeked


def gpt2_peek_ahead(seed: int = 0) -> nndiag.Subject:
    """A forward hook adds the next position's hidden state after the first block."""
    model = _gpt2(seed)
    model.transformer.h[0].register_forward_hook(_peek_ahead)
    return nndiag.Subject(
        Logits(model), _next_tokens(seed), loss=token_loss, name="gpt2_peek_ahead"
    )


def llama_hot_head(seed: int = 0) -> nndiag.Subject:
    """The LM head's weights ×30 (untied from the embeddings): over-confident at init."""
    model = Logits(_llama(seed))
    with torch.no_grad():
        model.model.lm_head.weight.mul_(30)
    return nndiag.Subject(model, _next_tokens(seed), loss=token_loss, name="llama_hot_head")


def resnet18_stale_batchnorm(seed: int = 0) -> nndiag.Subject:
    """``momentum = 0`` on every BatchNorm: running statistics never move from their init,
    so evaluation normalizes with mean 0 and variance 1."""
    model = _vision("resnet18", seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0
    return nndiag.Subject(model, _images(seed), name="resnet18_stale_batchnorm")


def resnet18_fc_after_optimizer(seed: int = 0) -> nndiag.Subject:
    """The fine-tuning slip: the optimizer is built over ``model.parameters()``, then the
    classifier is replaced; the new ``fc`` is not in the optimizer, the old one still is."""
    model = _vision("resnet18", seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.fc = nn.Linear(model.fc.in_features, CLASSES)
    return nndiag.Subject(model, _images(seed), optimizer=optimizer, name="resnet18_fc_after_opt")


def mobilenet_features_only_optimizer(seed: int = 0) -> nndiag.Subject:
    """An optimizer factory that reaches for ``model.features.parameters()`` instead of the
    parameters it is given: the classifier head is never trained."""
    model = _vision("mobilenet_v3_small", seed)
    return nndiag.Subject(
        model,
        _images(seed),
        optimizer=lambda params: torch.optim.Adam(model.features.parameters(), lr=1e-3),
        name="mobilenet_features_only_optimizer",
    )


def bert_frozen_max_norm_embeddings(seed: int = 0) -> nndiag.Subject:
    """The word embeddings are frozen (``requires_grad=False``) but keep ``max_norm``:
    ``nn.Embedding`` renormalizes the rows it looks up in place on every forward pass, so
    the "frozen" table changes during training."""
    subject = bert(seed)
    embeddings = subject.model.model.bert.embeddings.word_embeddings
    embeddings.weight.requires_grad_(False)
    embeddings.max_norm = 0.1  # the rows' norms at init are ~0.16
    batch = subject.batches[0]
    return nndiag.Subject(subject.model, (batch.X, batch.y), name="bert_frozen_max_norm")


def _pixels(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``transforms.ToTensor()`` gives without ``Normalize``: values in [0, 1] with
    ImageNet's per-channel means and stds."""
    x, y = _images(seed)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1), y


def resnet18_raw_pixels(seed: int = 0) -> nndiag.Subject:
    """Images fed as raw 0-255 values (no ``ToTensor`` scaling, no ``Normalize``)."""
    x, y = _pixels(seed)
    return nndiag.Subject(_vision("resnet18", seed), ((x * 255).round(), y), name="raw_pixels")


def resnet18_unnormalized(seed: int = 0) -> nndiag.Subject:
    """``ToTensor`` output without ``Normalize``: mean ~0.45, std ~0.22 per channel."""
    return nndiag.Subject(_vision("resnet18", seed), _pixels(seed), name="unnormalized")


def bert_one_class(seed: int = 0) -> nndiag.Subject:
    """Every label of the batch is class 3 (a batch read from a dataset sorted by label)."""
    subject = bert(seed)
    ids, _ = subject.batches[0].X, subject.batches[0].y
    return nndiag.Subject(subject.model, (ids, torch.full((TEXT_BATCH,), 3)), name="one_class")


def squeezenet_small_init(seed: int = 0) -> nndiag.Subject:
    """Every convolution but the classifier's drawn at 0.05x torchvision's He init (there is
    no batch norm in SqueezeNet to re-set the scale)."""
    model = _vision("squeezenet1_1", seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d) and not name.startswith("classifier"):
                module.weight.mul_(0.05)
    return nndiag.Subject(model, _images(seed), name="squeezenet_small_init")


def gpt2_symmetric_mlp(seed: int = 0) -> nndiag.Subject:
    """The first block's MLP input layer gives every unit the same weights (transformers'
    Conv1D stores (in, out): each unit is a column)."""
    model = _gpt2(seed)
    with torch.no_grad():
        w = model.transformer.h[0].mlp.c_fc.weight
        w.copy_(w[:, :1].expand_as(w))
    return nndiag.Subject(
        Logits(model), _next_tokens(seed), loss=token_loss, name="gpt2_symmetric_mlp"
    )


def squeezenet_lr_10(seed: int = 0) -> nndiag.Subject:
    """Stock SqueezeNet with an SGD optimizer at learning rate 10 (100x a usual 0.1)."""
    model = _vision("squeezenet1_1", seed)
    return nndiag.Subject(
        model,
        _images(seed),
        optimizer=lambda p: torch.optim.SGD(p, lr=10.0),
        name="squeezenet_lr_10",
    )


Factory = Callable[..., nndiag.Subject]

HEALTHY: dict[str, Factory] = {
    "resnet18": resnet18,
    "mobilenet_v3_small": mobilenet_v3_small,
    "squeezenet1_1": squeezenet1_1,
    "efficientnet_b0": efficientnet_b0,
    "timm_resnet10t": resnet10t,
    "timm_vit_tiny": vit_tiny,
    "gpt2": gpt2,
    "gpt2_unwrapped": gpt2_unwrapped,
    "llama": llama,
    "bert": bert,
    "t5": t5,
}

# name -> (factory, the check that must fail on it)
BUGS: dict[str, tuple[Factory, str]] = {
    "resnet18_hot_head": (resnet18_hot_head, "initial_loss"),
    "squeezenet_detached": (squeezenet_detached, "gradient_check"),
    "timm_vit_tiny_batch_centered": (vit_tiny_batch_centered, "batch_independence"),
    "gpt2_batch_softmax": (gpt2_batch_softmax, "batch_independence"),
    "llama_hot_head": (llama_hot_head, "initial_loss"),
    "squeezenet_grad_one_percent": (squeezenet_grad_one_percent, "gradient_check"),
    "llama_grad_one_percent": (llama_grad_one_percent, "gradient_check"),
    "resnet18_stale_batchnorm": (resnet18_stale_batchnorm, "batchnorm"),
    "resnet18_fc_after_optimizer": (resnet18_fc_after_optimizer, "param_updates"),
    "mobilenet_features_only_optimizer": (mobilenet_features_only_optimizer, "param_updates"),
    "squeezenet_detached_no_gradient": (squeezenet_detached, "param_updates"),
    "bert_frozen_max_norm_embeddings": (bert_frozen_max_norm_embeddings, "param_updates"),
    "squeezenet_small_init": (squeezenet_small_init, "init_scale"),
    "gpt2_symmetric_mlp": (gpt2_symmetric_mlp, "init_scale"),
    "squeezenet_lr_10": (squeezenet_lr_10, "learning_rate"),
    "bert_as_lm": (bert_as_lm, "causality"),
    "gpt2_peek_ahead": (gpt2_peek_ahead, "causality"),
}

# Planted data problems input_stats warns about (it never fails): name -> (factory, cause)
DATA_BUGS: dict[str, tuple[Factory, str]] = {
    "resnet18_raw_pixels": (resnet18_raw_pixels, "raw_pixels"),
    "resnet18_unnormalized": (resnet18_unnormalized, "not_centered"),
    "bert_one_class": (bert_one_class, "imbalance"),
}

# Caught too, but slow for the test run: gradient_check spends ~50-100 s naming the 88
# tensors the detach cuts off (2.7-4.7 s on the healthy model). Run by name from
# benchmarks/real_models.py.
SLOW_BUGS: dict[str, tuple[Factory, str]] = {
    "timm_vit_tiny_detached": (vit_tiny_detached, "gradient_check"),
}

# Planted bugs some seeds miss (benchmarks only): none at present.
MISSED_BUGS: dict[str, tuple[Factory, str]] = {}
