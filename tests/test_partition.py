import pytest
import torch

from ahm_core.data.partition import partition


def labels_of(people=40, per=10):
    return torch.arange(people).repeat_interleave(per)


def covers_once(labels, clients):
    every = torch.cat([torch.cat([c.train, c.val]) for c in clients])
    assert torch.equal(every.sort().values, torch.arange(len(labels)))
    for c in clients:
        assert not set(c.train.tolist()) & set(c.val.tolist())


def test_identity_partition_keeps_people_on_one_client():
    labels = labels_of()
    clients = partition(labels, 4, "identity", val_fraction=0.2, seed=1)
    covers_once(labels, clients)
    owners = [set(labels[torch.cat([c.train, c.val])].tolist()) for c in clients]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not owners[i] & owners[j]
    assert [len(c.train) + len(c.val) for c in clients] == [100] * 4
    assert all(len(c.val) == 20 for c in clients)


def test_iid_partition_is_even():
    labels = labels_of()
    clients = partition(labels, 3, "iid", seed=0)
    covers_once(labels, clients)
    sizes = [len(c.train) + len(c.val) for c in clients]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_skew_follows_alpha():
    labels = labels_of(people=60, per=20)

    def top_share(alpha):
        clients = partition(labels, 5, "dirichlet", alpha=alpha, val_fraction=0.0, seed=2)
        covers_once(labels, clients)
        owner = torch.empty(len(labels), dtype=torch.long)
        for k, c in enumerate(clients):
            owner[c.train] = k
        counts = torch.stack([torch.bincount(owner[labels == p], minlength=5) for p in range(60)])
        return (counts.max(dim=1).values / 20.0).mean().item()

    assert top_share(0.05) > 0.8 > 0.4 > top_share(100.0)


def test_same_seed_same_partition_and_indices_not_copies():
    labels = labels_of()
    a = partition(labels, 4, "dirichlet", seed=7)
    b = partition(labels, 4, "dirichlet", seed=7)
    assert all(
        torch.equal(x.train, y.train) and torch.equal(x.val, y.val)
        for x, y in zip(a, b, strict=True)
    )
    c = partition(labels, 4, "dirichlet", seed=8)
    assert not all(torch.equal(x.train, y.train) for x, y in zip(a, c, strict=True))
    assert a[0].train.dtype == torch.long


def test_small_clients_are_an_error_or_dropped():
    labels = torch.tensor([0] * 30 + [1] * 30 + [2] * 2)
    with pytest.raises(ValueError, match="client 2 gets 2 training images, below the minimum 5"):
        partition(labels, 3, "identity", val_fraction=0.0, min_size=5)
    kept = partition(labels, 3, "identity", val_fraction=0.0, min_size=5, drop_small=True)
    assert len(kept) == 2 and sum(len(c.train) for c in kept) == 60


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown 'pets'"):
        partition(labels_of(), 2, "pets")
    with pytest.raises(ValueError, match="3 identities cannot give 4 clients"):
        partition(torch.tensor([0, 1, 2]), 4, "identity")
