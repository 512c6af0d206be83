"""The stage-1 losses against hand computations on small tensors."""
import math

import pytest
import torch

from constyle_plugin.training.losses import (ClassificationLoss, ContentLoss, DistillKLLoss, InfoNCELoss,
                                    StyleLoss, gram_matrix)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- hand-written references
def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def infonce_by_hand(q, k, queue, temp, normalize=False):
    """q, k: lists of B rows; queue: list of D rows of K columns."""
    cols = [[row[j] for row in queue] for j in range(len(queue[0]))]
    if normalize:
        q, k, cols = [unit(v) for v in q], [unit(v) for v in k], [unit(c) for c in cols]
    losses = []
    for qi, ki in zip(q, k):
        logits = [dot(qi, ki) / temp] + [dot(qi, c) / temp for c in cols]
        losses.append(-logits[0] + math.log(sum(math.exp(v) for v in logits)))
    return losses


def softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------- InfoNCE
def test_infonce_single_pair_literal_value():
    # l_pos = 1, l_neg = 0, T = 1: loss = -1 + log(e + 1) = log(1 + 1/e)
    loss = InfoNCELoss(temperature=1.0)(t([[1.0, 0.0]]), t([[1.0, 0.0]]), t([[0.0], [1.0]]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-12)


@pytest.mark.parametrize("temp", [0.07, 0.5, 1.0])
def test_infonce_matches_explicit_sums(temp):
    q = [[1.0, 0.0, 0.5], [0.0, 2.0, -1.0]]
    k = [[0.5, 0.5, 0.0], [1.0, 1.0, 1.0]]
    queue = [[1.0, 0.0, -1.0, 0.2], [0.0, 1.0, 1.0, 0.3], [0.4, -0.5, 0.0, 1.0]]  # D=3 x K=4
    expected = infonce_by_hand(q, k, queue, temp)
    mean = InfoNCELoss(temperature=temp)(t(q), t(k), t(queue))
    assert mean.item() == pytest.approx(sum(expected) / 2, rel=1e-10)
    per_sample = InfoNCELoss(temperature=temp, reduction="none")(t(q), t(k), t(queue))
    assert per_sample.tolist() == pytest.approx(expected, rel=1e-10)
    summed = InfoNCELoss(temperature=temp, reduction="sum", loss_weight=3.0)(t(q), t(k), t(queue))
    assert summed.item() == pytest.approx(3.0 * sum(expected), rel=1e-10)


def test_infonce_logits_layout():
    q, k, queue = t([[1.0, 2.0]]), t([[3.0, 4.0]]), t([[1.0, 0.0], [0.0, 1.0]])
    logits = InfoNCELoss(temperature=0.5).logits(q, k, queue)
    assert logits.tolist() == [[22.0, 2.0, 4.0]]  # [11, 1, 2] / 0.5


def test_infonce_normalize_follows_moco():
    q, k, queue = [[2.0, 0.0]], [[3.0, 0.0]], [[0.0], [5.0]]
    raw = InfoNCELoss(temperature=1.0)(t(q), t(k), t(queue)).item()
    norm = InfoNCELoss(temperature=1.0, normalize=True)(t(q), t(k), t(queue)).item()
    assert raw == pytest.approx(math.log(1 + math.exp(-6)), abs=1e-12)  # l_pos = 6, l_neg = 0
    assert norm == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-12)  # l_pos = 1, l_neg = 0
    qq = [[1.0, 2.0, -1.0], [0.5, -0.3, 0.2]]
    kk = [[0.3, 1.0, 0.0], [2.0, 0.1, 0.4]]
    qu = [[1.0, -2.0], [0.5, 3.0], [2.0, 0.0]]
    got = InfoNCELoss(temperature=0.2, normalize=True, reduction="none")(t(qq), t(kk), t(qu))
    assert got.tolist() == pytest.approx(infonce_by_hand(qq, kk, qu, 0.2, normalize=True), rel=1e-10)


def test_infonce_gradients_reach_q_only():
    q = torch.randn(3, 4, requires_grad=True)
    k = torch.randn(3, 4, requires_grad=True)
    queue = torch.randn(4, 5, requires_grad=True)
    InfoNCELoss()(q, k, queue).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_infonce_shape_errors_name_the_tensor():
    loss = InfoNCELoss()
    with pytest.raises(ValueError, match="queue"):
        loss(torch.randn(2, 128), torch.randn(2, 128), torch.randn(64, 10))
    with pytest.raises(ValueError, match="k"):
        loss(torch.randn(2, 128), torch.randn(3, 128), torch.randn(128, 10))
    with pytest.raises(ValueError, match="q"):
        loss(torch.randn(2, 128, 1), torch.randn(2, 128), torch.randn(128, 10))
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        InfoNCELoss(reduction="avg")


# ---------------------------------------------------------------- content
def test_content_loss_is_mse():
    zq, zk = t([[1.0, 2.0], [3.0, 4.0]]), t([[0.0, 2.0], [3.0, 0.0]])
    assert ContentLoss()(zq, zk).item() == pytest.approx(17 / 4)  # (1 + 0 + 0 + 16) / 4
    assert ContentLoss(loss_weight=2.0)(zq, zk).item() == pytest.approx(8.5)
    assert ContentLoss(reduction="sum")(zq, zk).item() == pytest.approx(17.0)
    with pytest.raises(ValueError, match="z_k"):
        ContentLoss()(zq, t([[1.0, 2.0]]))


# ---------------------------------------------------------------- style
def test_gram_matrix_divides_by_batch_times_dim():
    z = t([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])  # B=2, D=3
    assert gram_matrix(z).flatten().tolist() == pytest.approx([5 / 6, 2 / 6, 2 / 6, 2 / 6])


def test_style_loss_value_and_sign():
    z1 = t([[1.0, 0.0], [0.0, 1.0]])  # G = I / 4
    z2 = t([[1.0, 1.0], [1.0, 1.0]])  # G = 0.5 everywhere
    neg1 = t([[0.0, 0.0], [0.0, 0.0]])  # G = 0
    neg2 = t([[1.0, 0.0], [0.0, 1.0]])  # G = I / 4
    # MSE(I/4, 0) = 2 * 0.0625 / 4 = 0.03125; MSE(0.5, I/4) = (2*0.0625 + 2*0.25) / 4 = 0.15625
    loss = StyleLoss()(z1, z2, neg1, neg2)
    assert loss.item() == pytest.approx(-0.1875)
    assert StyleLoss(loss_weight=2.0)(z1, z2, neg1, neg2).item() == pytest.approx(-0.375)
    # the pairing is positional: z1 <-> neg1, z2 <-> neg2
    assert StyleLoss()(z1, z2, neg2, neg1).item() == pytest.approx(-0.25)  # 0 + MSE(0.5, 0)


def test_style_loss_against_explicit_sums_at_latent_width():
    g = torch.Generator().manual_seed(0)
    z1, z2, n1, n2 = (torch.randn(3, 128, generator=g, dtype=torch.float64) for _ in range(4))

    def mse_of_grams(a, b):
        total = 0.0
        for i in range(3):
            for j in range(3):
                ga = sum(a[i, c].item() * a[j, c].item() for c in range(128)) / (3 * 128)
                gb = sum(b[i, c].item() * b[j, c].item() for c in range(128)) / (3 * 128)
                total += (ga - gb) ** 2
        return total / 9

    expected = -(mse_of_grams(z1, n1) + mse_of_grams(z2, n2))
    assert StyleLoss()(z1, z2, n1, n2).item() == pytest.approx(expected, rel=1e-9)


def test_style_loss_pushes_queries_away_and_leaves_negatives_alone():
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8, requires_grad=True)
    n1 = torch.randn(4, 8, requires_grad=True)
    n2 = torch.randn(4, 8, requires_grad=True)
    loss = StyleLoss()(z1, z2, n1, n2)
    assert loss.item() < 0
    loss.backward()
    assert n1.grad is None and n2.grad is None
    with torch.no_grad():  # one gradient step on the queries increases both distances
        after = StyleLoss()(z1 - 0.01 * z1.grad, z2 - 0.01 * z2.grad, n1, n2)
    assert after.item() < loss.item()


def test_style_loss_shape_errors_name_the_tensor():
    z = torch.randn(4, 128)
    with pytest.raises(ValueError, match="neg1"):
        StyleLoss()(z, z, torch.randn(2, 128), z)
    with pytest.raises(ValueError, match="neg2"):
        StyleLoss()(z, z, z, torch.randn(4, 64))


# ---------------------------------------------------------------- KL distillation
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_distill_kl_is_explicit_sum(temp):
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[0.5, 0.1, 2.0], [1.0, 1.0, 0.0]]
    expected = 0.0
    for s, tt in zip(student, teacher):
        p = softmax([v / temp for v in tt])
        q = softmax([v / temp for v in s])
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    expected = expected / 2 * temp ** 2
    got = DistillKLLoss(temperature=temp)(t(student), t(teacher))
    assert got.item() == pytest.approx(expected, rel=1e-10)
    assert DistillKLLoss(temperature=temp, loss_weight=0.5)(t(student), t(teacher)).item() == \
        pytest.approx(expected / 2, rel=1e-10)


def test_distill_kl_zero_for_equal_logits_and_teacher_detached():
    s = torch.randn(3, 10, requires_grad=True)
    teacher = s.detach().clone().requires_grad_(True)
    loss = DistillKLLoss()(s, teacher)
    assert abs(loss.item()) < 1e-6
    DistillKLLoss()(s, teacher * 2).backward()
    assert teacher.grad is None and s.grad is not None
    with pytest.raises(ValueError, match="teacher_logits"):
        DistillKLLoss()(s, torch.randn(3, 9))


# ---------------------------------------------------------------- pretext classification
def test_classification_loss_with_and_without_smoothing():
    logits = t([[0.0, 0.0, math.log(2.0)]])  # p = [1/4, 1/4, 1/2]
    labels = torch.tensor([2])
    assert ClassificationLoss()(logits, labels).item() == pytest.approx(math.log(2.0))
    # (1 - eps) * (-log p_y) + eps * mean_c(-log p_c) = 0.7 ln2 + 0.3 * (5 ln2 / 3) = 1.2 ln2
    smooth = ClassificationLoss(label_smoothing=0.3)(logits, labels)
    assert smooth.item() == pytest.approx(1.2 * math.log(2.0))


def test_classification_label_errors():
    logits = torch.randn(2, 5)
    with pytest.raises(ValueError, match="labels"):
        ClassificationLoss()(logits, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="labels"):
        ClassificationLoss()(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="labels"):
        ClassificationLoss()(logits, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassificationLoss(label_smoothing=1.5)
