import time, torch, torch.nn.functional as F
def t(cin, cout, layout, bench, xgrad, batch=16, h=1024, w=64, iters=20):
    torch.backends.cudnn.benchmark = bench
    mf = torch.channels_last if layout == 'cl' else torch.contiguous_format
    x = torch.randn(batch, cin, h, w, device='cuda', dtype=torch.bfloat16).to(memory_format=mf).requires_grad_(xgrad)
    wt = torch.randn(cout, cin, 3, 3, device='cuda', dtype=torch.bfloat16).to(memory_format=mf).requires_grad_(True)
    g = None
    for i in range(iters + 5):
        if i == 5: torch.cuda.synchronize(); s = time.perf_counter()
        y = F.conv2d(x, wt, padding=1)
        g = torch.randn_like(y) if g is None else g
        torch.autograd.backward(y, g)
    torch.cuda.synchronize(); return 1e3 * (time.perf_counter() - s) / iters
for bench in (False, True):
    for layout in ('nchw', 'cl'):
        for cin in (3, 4, 8):
            print(f'in {cin}->64 {layout} benchmark={bench}: {t(cin, 64, layout, bench, False):.3f} ms')
        for cout in (3, 4, 8):
            print(f'out 64->{cout} {layout} benchmark={bench}: {t(64, cout, layout, bench, True):.3f} ms')
