package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// startHost prepares one demo "host": a directory with a spool area (a
// 4 MiB tmpfs when running as root), the demo service, and an agent whose
// agent.yaml allows exactly the repairs the demo policies ask for.
func (d *demo) startHost(ctx context.Context, n int, zone, cpAddr, token string) (*demoAgent, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(d.tmp, fmt.Sprintf("host-%d", n))
	a := &demoAgent{
		name:    fmt.Sprintf("demo-%d", n),
		zone:    zone,
		svcAddr: addr,
		dir:     dir,
		pidfile: filepath.Join(dir, "service.pid"),
		dataDir: filepath.Join(dir, "agent-data"),
		spool:   filepath.Join(dir, "spool"),
	}
	if err := os.MkdirAll(a.spool, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(a.dataDir, 0o700); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if err := unix.Mount("tmpfs", a.spool, "tmpfs", 0, "size=4m"); err != nil {
			return nil, fmt.Errorf("mount a 4 MiB tmpfs on %s: %w", a.spool, err)
		}
		d.mounts = append(d.mounts, a.spool)
		d.tmpfs = true
	} else if n == 1 {
		d.logf("not root: the spools are plain directories, so the full-disk failure is skipped")
	}
	d.hosts = append(d.hosts, a)
	svc := filepath.Join(d.binDir, "tend-demo-service")
	if _, err := d.spawn("tend-demo-service@"+a.name, "--listen", addr, "--pidfile", a.pidfile); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+addr+"/healthz", 10*time.Second); err != nil {
		return nil, err
	}
	cfg := filepath.Join(a.dataDir, "agent.yaml")
	yaml := fmt.Sprintf(`# written by tend-demo: what this host allows Tend to do to it
pluginDir: %q
checks:
  - name: root-disk
    type: disk
    interval: 5s
    disk: {path: /, maxUsedPercent: 99}
actions:
  process.restart:
    commands:
      - [%q, "--listen", %q, "--pidfile", %q]
    pidfiles: [%q]
  disk.cleanup:
    paths: [%q]
`, d.binDir, svc, addr, a.pidfile, a.pidfile, a.spool)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		return nil, err
	}
	labels := fmt.Sprintf("role=web,zone=%s,app=demo,demo_addr=%s,demo_dir=%s,demo_bin=%s", zone, addr, dir, svc)
	if _, err := d.spawn("tend-agent@"+a.name, "--server", cpAddr, "--token", token, "--config", cfg,
		"--data-dir", a.dataDir, "--name", a.name, "--labels", labels); err != nil {
		return nil, err
	}
	d.logf("agent %s (role=web, zone=%s) started, watching demo service %s", a.name, zone, addr)
	return a, nil
}

func readPid(pidfile string) (int, error) {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pidfile %s: bad pid %q", pidfile, b)
	}
	return pid, nil
}

func (d *demo) killService(a *demoAgent) error {
	pid, err := readPid(a.pidfile)
	if err != nil {
		return err
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

// fillSpool writes *.log files until the spool is over 85% full.
func fillSpool(a *demoAgent) (float64, error) {
	chunk := make([]byte, 256<<10)
	for i := 0; ; i++ {
		var st unix.Statfs_t
		if err := unix.Statfs(a.spool, &st); err != nil {
			return 0, err
		}
		used := float64(st.Blocks-st.Bfree) / float64(st.Blocks-st.Bfree+st.Bavail) * 100
		if used > 85 || i > 64 {
			return used, nil
		}
		if err := os.WriteFile(filepath.Join(a.spool, fmt.Sprintf("fill-%02d.log", i)), chunk, 0o644); err != nil {
			return used, err
		}
	}
}

// stopServices stops the demo services, which Tend may have restarted (so
// they are no longer our children): by the pid in their pidfile.
func (d *demo) stopServices() {
	for _, a := range d.hosts {
		if pid, err := readPid(a.pidfile); err == nil {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	for _, m := range d.mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			fmt.Fprintf(os.Stderr, "demo: unmount %s: %v\n", m, err)
		}
	}
}
