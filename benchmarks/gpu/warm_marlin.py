"""Load a GPTQ and an AWQ model once through transformers + gptqmodel Marlin so its JIT kernels are compiled
(about 3.5 minutes the first time on a fresh machine); run in the background while other work goes on."""

import sys

import quantdeploy

for p in sys.argv[1:]:
    m = quantdeploy.load(p, engine="hf", kernel="marlin", device="cuda")
    print(p, m.kernel_report()["quant_linear_classes"], flush=True)
    m.close()
