"""Ray resource requests from plans: the arithmetic alone (no Ray needed)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memtrain.launch.executor import Resources
from memtrain.launch.resources import GPU_RESOLUTION, NeverFits, check_fits, gpu_fraction, ray_options

GiB = 1 << 30


def test_gpu_fraction_rounds_up_to_rays_resolution():
    assert gpu_fraction(20 * GiB, 80 * GiB) == 0.25
    assert gpu_fraction(20 * GiB + 1, 80 * GiB) == 0.2501  # one byte more: the next 1/10000
    assert gpu_fraction(1, 80 * GiB) == 0.0001  # never 0: a job always holds some of the GPU
    assert gpu_fraction(80 * GiB, 80 * GiB) == 1.0
    assert int(gpu_fraction(53, 92) * GPU_RESOLUTION) == 5761  # 0.5761 * 10000 is 5760.99... in floats


@given(st.integers(0, 10**13), st.integers(1, 10**12))
def test_gpu_fraction_never_promises_less_than_the_bytes(total, capacity):
    try:
        f = gpu_fraction(total, capacity)
    except NeverFits:
        assert total > capacity
        return
    units = round(f * GPU_RESOLUTION)
    assert int(f * GPU_RESOLUTION) == units  # whether Ray rounds or truncates f to its units
    assert units * capacity >= total * GPU_RESOLUTION  # jobs whose fractions sum <= 1 fit the GPU together
    assert units == 1 or (units - 1) * capacity < total * GPU_RESOLUTION  # and no more than needed


def test_gpu_fraction_of_more_than_one_gpu_never_fits():
    with pytest.raises(NeverFits, match="needs 81.00 GiB on one GPU; the GPU holds 80.00 GiB"):
        gpu_fraction(81 * GiB, 80 * GiB)


def test_cpu_jobs_ask_for_rays_memory_resource_and_their_threads():
    r = Resources(planned_bytes=300 << 20, overhead_bytes=100 << 20, num_cpus=2)
    assert ray_options(r, "cpu") == {"num_cpus": 2, "memory": 400 << 20}


def test_gpu_jobs_ask_for_a_fraction_of_their_gpu_model():
    r = Resources(planned_bytes=15 * GiB, overhead_bytes=GiB, num_cpus=1, device_capacity_bytes=80 * GiB)
    assert ray_options(r, "cuda:0") == {"num_cpus": 1, "num_gpus": 0.2}
    assert ray_options(r, "cuda:0", accelerator_type="A100") == {"num_cpus": 1, "num_gpus": 0.2,
                                                                  "accelerator_type": "A100"}
    with pytest.raises(ValueError, match="device_capacity_bytes"):
        ray_options(Resources(GiB, 0), "cuda:0")


NODES = [{"Alive": True, "Resources": {"CPU": 4.0, "memory": 8.0 * GiB}},
         {"Alive": True, "Resources": {"CPU": 8.0, "memory": 2.0 * GiB, "GPU": 1.0, "accelerator_type:T4": 1.0}},
         {"Alive": False, "Resources": {"CPU": 64.0, "memory": 512.0 * GiB}}]


def test_check_fits_accepts_what_some_alive_node_could_hold():
    check_fits({"num_cpus": 4, "memory": 8 * GiB}, NODES)
    check_fits({"num_cpus": 1, "num_gpus": 0.5, "accelerator_type": "T4"}, NODES)


def test_check_fits_refuses_with_the_largest_alive_node():
    with pytest.raises(NeverFits, match=r"j1: needs 9.00 GiB of Ray memory and 1 CPU\(s\); the largest Ray node "
                                        r"offers 8.00 GiB and 8 CPU\(s\)") as info:
        check_fits({"num_cpus": 1, "memory": 9 * GiB}, NODES, what="j1")  # the dead node does not count
    assert info.value.largest_bytes == 8 * GiB
    with pytest.raises(NeverFits, match="no Ray node offers accelerator_type=A100"):
        check_fits({"num_cpus": 1, "num_gpus": 0.5, "accelerator_type": "A100"}, NODES)
