"""The batched decode kernel (qd_w4a16_mma) at 64 tokens on two 8B shapes, o (4096 x 4096) and gate|up (4096 x 28672),
with its default choices: a target for Nsight Compute.

    ncu --kernel-name regex:qd_w4a16 --launch-skip 1 --launch-count 3 --section SpeedOfLight \\
        --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats \\
        python benchmarks/gpu/mma_profile.py
"""

from __future__ import annotations

import torch

from quantdeploy.engine import cuda_gemv, nk_layout

from gemm_ab import weight


def main() -> None:
    dev = torch.device("cuda")
    for k, n in ((4096, 4096), (4096, 28672)):
        lin = cuda_gemv.CudaLinear(nk_layout.repack(weight(k, n, dev, True)), dev, pdl_launch=False)
        x = torch.randn(64, k, device=dev).half()
        print(f"{k}x{n}: (warps, rows, stages) {lin.mma_choice(64)}", flush=True)
        for _ in range(2):
            lin.mma(x)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
