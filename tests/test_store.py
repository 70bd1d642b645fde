"""The job store's pages (memtrain/scheduling/store.py): rows read again only when changed."""

from memtrain.scheduling.store import Store


def row(i: int) -> dict:
    return {"id": f"j{i}", "name": f"n{i}", "state": "succeeded", "config": {}, "checked": {}, "device_kind": "cpu",
            "batch_request": 32, "planned": {}, "planned_bytes": 8, "min_bytes": 8, "max_attempts": 2,
            "submitted_at": 1.0, "queued_at": 1.0, "run_dir": f"/nonexistent/j{i}"}


def test_a_page_reads_again_only_the_rows_that_changed_and_never_drops_one(tmp_path):
    store = Store(tmp_path / "memtrain.sqlite")
    try:
        for i in range(5):
            store.insert(row(i))
        first, nxt = store.page(None, 3)
        assert [j.id for j in first] == ["j4", "j3", "j2"] and nxt == first[-1].seq
        again, _ = store.page(None, 3)
        assert all(a is b for a, b in zip(again, first, strict=True))  # unchanged: the same objects, nothing decoded
        store.update("j3", name="renamed", final_progress={"epoch": 2})
        after, _ = store.page(None, 3)
        assert after[0] is first[0] and after[2] is first[2]
        assert (after[1].name, after[1].final_progress, after[1].rev) == ("renamed", {"epoch": 2}, first[1].rev + 1)
        assert [j.id for j in store.page(None, 3, nxt)[0]] == ["j1", "j0"]
        assert [j.id for j in store.page("succeeded", 2, first[1].seq)[0]] == ["j2", "j1"]
        store.page(None, 5)  # all five kept
        store.ROWS_KEPT = 2  # fewer kept than a page holds, and two rows to read again:
        store.update("j4", name="x")
        store.update("j0", name="y")
        page = store.page(None, 5)[0]  # keeping those two drops the three the page holds already
        assert [(j.id, j.name) for j in page] == [("j4", "x"), ("j3", "renamed"), ("j2", "n2"), ("j1", "n1"),
                                                  ("j0", "y")]
        assert sorted(store._rows) == [page[4].seq, page[0].seq]
    finally:
        store.close()
