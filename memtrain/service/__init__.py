"""`memtrain serve`: a training service that packs jobs onto devices by their memory plans.

store (SQLite), planning (the one module that speaks memtrain's config/plan API),
scheduler (admission by plan, FIFO with bounded backfill), app (FastAPI), page
(the status page), metrics (the service's own Prometheus collector), security (the token,
the bind rule and the limits), view_cache (answers kept between changes, ETags),
slow_clients (uvicorn's protocol with a bound on the time to send a request), recovery
(each job's record in its dir, the store's backup, `serve --recover`), housekeeping
(backup, checkpoint retention and the state dir's size, once a round).
"""
