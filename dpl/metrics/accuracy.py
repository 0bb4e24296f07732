"""Top-k accuracy in percent (Dassl's ``compute_accuracy``)."""


def compute_accuracy(output, target, topk=(1,)):
    """Top-k accuracies of ``output`` [N, C] logits against ``target`` [N] labels, in percent.

    Returns a list with one 1-element tensor per k. A tuple/list ``output`` uses its first item
    (trainers whose model returns ``(logits, extras)``).
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, dim=1, largest=True, sorted=True)  # [N, maxk]
    correct = pred.t().eq(target.view(1, -1).expand(maxk, batch_size))  # [maxk, N]
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / batch_size) for k in topk]
