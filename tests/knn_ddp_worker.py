"""Run by tests/test_knn.py: 2-process gloo kNN on uneven shards equals the one-process result."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


def data():
    generator = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(53, 12, generator=generator), dim=1)
    train_labels = torch.randint(0, 4, (53,), generator=generator)
    queries = F.normalize(torch.randn(21, 12, generator=generator), dim=1)
    query_labels = torch.randint(0, 4, (21,), generator=generator)
    return train, train_labels, queries, query_labels


def worker(rank: int, world_size: int, init_file: str, queue) -> None:
    from unveil.finetune.knn import knn_accuracy, knn_predict

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    train, train_labels, queries, query_labels = data()
    train_split, query_split = (40, 13), (5, 16)  # uneven on purpose
    ts, qs = train.split(train_split), queries.split(query_split)
    tls, qls = train_labels.split(train_split), query_labels.split(query_split)
    accuracy = knn_accuracy(ts[rank], tls[rank], qs[rank], qls[rank], 4, ks=(1, 5, 20, 200), chunk_size=4)
    scores = knn_predict(ts[rank], tls[rank], queries, 4, ks=(5, 20), chunk_size=7)  # the full query set
    # plain lists: a tensor crosses the queue as a file descriptor that dies with this process
    queue.put((rank, accuracy, {k: v.tolist() for k, v in scores.items()}))
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


def main(folder: str) -> None:
    from unveil.finetune.knn import knn_accuracy, knn_predict

    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=worker, args=(rank, 2, f"{folder}/init", queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=200) for _ in processes]
    for process in processes:
        process.join()
        assert process.exitcode == 0
    train, train_labels, queries, query_labels = data()
    expected = knn_accuracy(train, train_labels, queries, query_labels, 4, ks=(1, 5, 20, 200))
    expected_scores = knn_predict(train, train_labels, queries, 4, ks=(5, 20))
    for rank, accuracy, scores in results:
        assert accuracy == expected, (rank, accuracy, expected)
        for k in (5, 20):
            torch.testing.assert_close(torch.tensor(scores[k]), expected_scores[k], rtol=1e-5, atol=1e-6)
    print("ddp knn ok")


if __name__ == "__main__":
    main(sys.argv[1])
