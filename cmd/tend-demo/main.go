// Command tend-demo runs Tend's demo on this machine: a control plane and
// three agents on loopback, each with its own data dir and labels, each
// watching a small demo service; it applies the example policies and shows
// the fleet and its check states live, then cleans up.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	binDir := flag.String("bin-dir", "bin", "directory holding the built binaries")
	examples := flag.String("examples", "deploy/examples", "directory of example policies to apply")
	watch := flag.Duration("watch", 12*time.Second, "how long to show the live view")
	keep := flag.Bool("keep", false, "keep the temporary directory (logs, data dirs) afterwards")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	abs, err := filepath.Abs(*binDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	d := &demo{binDir: abs, examples: *examples, watch: *watch, keep: *keep, out: os.Stdout}
	code := d.run(ctx)
	os.Exit(code)
}
