// Command tend-demo runs Tend's demo on this machine: a control plane and
// three agents on loopback, each with its own data dir and labels, each
// watching a small demo service. It applies the demo policies, breaks one
// thing on each host (kills the service, fills a 4 MiB tmpfs, makes the
// health endpoint fail), prints the timeline of every incident as Tend
// detects, remediates and verifies it, and exits 0 only if all were fixed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	binDir := flag.String("bin-dir", "bin", "directory holding the built binaries")
	examples := flag.String("examples", "deploy/examples", "directory of example policies to apply")
	keep := flag.Bool("keep", false, "keep the temporary directory (logs, data dirs) afterwards")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	abs, err := filepath.Abs(*binDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	d := &demo{binDir: abs, examples: *examples, keep: *keep, out: os.Stdout}
	code := d.run(ctx)
	os.Exit(code)
}
