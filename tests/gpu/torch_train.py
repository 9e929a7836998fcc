"""torch_train.py LIB — a PyTorch training loop (small MLP, 300 steps of forward, backward
and optimizer) run with and without LD_PRELOAD of fragless: fragless must serve the
allocations and the final loss must be the same."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fragless_stats as fs


def child():
    torch = fs.require("torch")
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 10)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(4096, 256, device=dev)
    y = torch.randint(0, 10, (4096,), device=dev)
    for step in range(300):
        idx = torch.arange(step * 64 % 4096, step * 64 % 4096 + 64, device=dev)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    s = fs.stats(torch.cuda.current_device())
    if s is not None:
        print("served %d" % s["num_allocs"])
    print("loss %.6f" % loss.item())


if __name__ == "__main__":
    if "--child" in sys.argv:
        child()
    else:
        fs.require("torch")
        env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        sys.exit(fs.compare_with_and_without(os.path.abspath(__file__), sys.argv[1], env))
