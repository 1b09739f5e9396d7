// Package watchdog stops the agent when it uses more memory or CPU than
// its limits allow, so that a leak or a runaway loop in the agent costs
// the host a restart rather than its memory or a core.
//
// Like osquery's watchdog it watches the agent's resident memory and its
// CPU time. Unlike osquery it runs inside the agent (osquery forks a
// watcher process: that would double the agent's footprint): every
// Interval it reads /proc/self/statm and getrusage(RUSAGE_SELF), and on a
// sustained breach it reports the figures; the caller logs them, stops
// and exits with ExitCode, and systemd (Restart=on-failure) starts the
// agent again. The agent's outbox is durable, so a restart loses no
// result. A runaway that does not let the agent stop is a job for the
// unit's MemoryMax and CPUQuota (deploy/systemd/tend-agent.service).
//
// What counts: the agent process itself. Commands run by command checks
// and remediations, and plugin processes, are children; they have their
// own timeouts (a check or task that outlives its timeout is killed) and
// are not counted here.
//
// The decision (Decider) is pure: readings and times are passed in.
package watchdog

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ExitCode is the agent's exit status after a watchdog stop (1 is any
// other failure, 2 a usage error).
const ExitCode = 3

// Defaults.
const (
	// DefaultMemory is the resident memory limit: about ten times what an
	// idle agent uses (about 23 MB), and what osquery allows by default.
	DefaultMemory = 200 << 20
	// DefaultCPU is the CPU limit in cores, averaged over DefaultCPUWindow:
	// a tenth of a core for a minute is a hundred times an idle agent's
	// 0.1 %, and six seconds of CPU a minute covers resending a full
	// outbox after an outage; a loop spinning on one core trips it within
	// about 6 s of a minute's window. osquery's default is also 10 %.
	DefaultCPU = 0.10
	// DefaultCPUWindow is the window the CPU use is averaged over.
	DefaultCPUWindow = time.Minute
	// DefaultInterval is how often the readings are taken.
	DefaultInterval = 5 * time.Second
	// MemorySamples is how many consecutive readings over the memory limit
	// make a breach (a transient peak the GC is about to return is not).
	MemorySamples = 3
)

// Limits are the watchdog's limits. A zero Memory or CPU turns that limit
// off.
type Limits struct {
	// Memory is the resident set size limit in bytes.
	Memory uint64
	// CPU is the CPU limit in cores (0.1 = 10 % of one core), averaged
	// over CPUWindow.
	CPU       float64
	CPUWindow time.Duration
}

// DefaultLimits are the limits without configuration.
func DefaultLimits() Limits {
	return Limits{Memory: DefaultMemory, CPU: DefaultCPU, CPUWindow: DefaultCPUWindow}
}

// Reading is one look at the process: when, its total CPU time so far and
// its resident set size.
type Reading struct {
	At  time.Time
	CPU time.Duration
	RSS uint64
}

// Breach says why the watchdog stops the agent.
type Breach struct {
	// Kind is "memory" or "cpu".
	Kind string
	// Reason has the figures, for the log.
	Reason string
}

func (b *Breach) Error() string { return "watchdog: " + b.Reason }

// Decider turns readings into a decision. It is not safe for concurrent
// use.
type Decider struct {
	lim     Limits
	samples int // readings needed over the memory limit
	hist    []Reading
	memOver int
}

// NewDecider returns a Decider for lim.
func NewDecider(lim Limits) *Decider {
	if lim.CPUWindow <= 0 {
		lim.CPUWindow = DefaultCPUWindow
	}
	return &Decider{lim: lim, samples: MemorySamples}
}

// Observe takes the next reading (in time order) and returns a breach, or
// nil. CPU use is judged only once a whole window of readings is held, so
// the CPU spent starting up (enrolling, opening the database) is averaged
// over a full window like any other.
func (d *Decider) Observe(r Reading) *Breach {
	if d.lim.Memory > 0 {
		if r.RSS > d.lim.Memory {
			d.memOver++
		} else {
			d.memOver = 0
		}
		if d.memOver >= d.samples {
			return &Breach{Kind: "memory", Reason: fmt.Sprintf("resident memory %s is over the limit of %s (%d readings in a row)",
				FormatBytes(r.RSS), FormatBytes(d.lim.Memory), d.memOver)}
		}
	}
	if d.lim.CPU <= 0 {
		return nil
	}
	d.hist = append(d.hist, r)
	// Keep the newest reading at least a window old as the base.
	cut := 0
	for i := range d.hist {
		if r.At.Sub(d.hist[i].At) >= d.lim.CPUWindow {
			cut = i
		}
	}
	d.hist = d.hist[cut:]
	base := d.hist[0]
	span := r.At.Sub(base.At)
	if span < d.lim.CPUWindow || span <= 0 {
		return nil
	}
	used := r.CPU - base.CPU
	if cores := used.Seconds() / span.Seconds(); cores > d.lim.CPU {
		return &Breach{Kind: "cpu", Reason: fmt.Sprintf("used %s of CPU in the last %s (%.1f%% of a core), over the limit of %.1f%% of a core",
			used.Round(time.Millisecond), span.Round(time.Second), 100*cores, 100*d.lim.CPU)}
	}
	return nil
}

// GoMemoryLimit is the Go runtime's soft memory limit for a resident
// memory limit: three quarters of it, leaving room for what is not Go
// heap (stacks, the binary's pages, C libraries), so that the garbage
// collector works harder before the watchdog has to stop the agent.
func GoMemoryLimit(rss uint64) int64 {
	return int64(rss / 4 * 3)
}

// Config runs a Watchdog.
type Config struct {
	Limits   Limits
	Interval time.Duration // default DefaultInterval
	// Read takes a reading (default ReadSelf).
	Read func() (Reading, error)
	// SetGoMemoryLimit: set the Go runtime's soft memory limit from
	// Limits.Memory (GoMemoryLimit) unless GOMEMLIMIT is set.
	SetGoMemoryLimit bool
}

// Run takes a reading every Interval until ctx is done or a breach, which
// it returns. A failed reading is returned as an error (the watchdog
// cannot work without /proc).
func Run(ctx context.Context, cfg Config) (*Breach, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Read == nil {
		cfg.Read = ReadSelf
	}
	if cfg.SetGoMemoryLimit && cfg.Limits.Memory > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(GoMemoryLimit(cfg.Limits.Memory))
	}
	d := NewDecider(cfg.Limits)
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		r, err := cfg.Read()
		if err != nil {
			return nil, fmt.Errorf("watchdog: %w", err)
		}
		if b := d.Observe(r); b != nil {
			return b, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case <-t.C:
		}
	}
}

var pageSize = uint64(os.Getpagesize())

// ReadSelf reads this process's CPU time (getrusage) and resident set
// size (/proc/self/statm).
func ReadSelf() (Reading, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return Reading{}, fmt.Errorf("getrusage: %w", err)
	}
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return Reading{}, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return Reading{}, fmt.Errorf("/proc/self/statm: unexpected content %q", b)
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return Reading{}, fmt.Errorf("/proc/self/statm: resident pages %q: %w", f[1], err)
	}
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return Reading{At: time.Now(), CPU: cpu, RSS: pages * pageSize}, nil
}

// FormatBytes writes a size as "200 MiB", "1.5 GiB" or "512 KiB".
func FormatBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', -1, 64) + " GiB"
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
	default:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + " KiB"
	}
}

// ParseBytes parses a memory size: a whole number with a unit, KiB, MiB
// or GiB (or KB, MB, GB: the same binary units), or "off" (0).
func ParseBytes(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "off" || s == "0" {
		return 0, nil
	}
	units := []struct {
		suffix string
		mul    uint64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseUint(strings.TrimSpace(num), 10, 64)
			if err != nil || v == 0 || v > (1<<63)/u.mul {
				break
			}
			return v * u.mul, nil
		}
	}
	return 0, fmt.Errorf("bad memory size %q: want a whole number with a unit, like 200MiB or 1GiB, or off", s)
}

// ParseCPU parses a CPU limit as a percent of one core ("10%", up to
// "800%" for eight cores), or "off" (0). It returns cores.
func ParseCPU(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "off" || s == "0" {
		return 0, nil
	}
	num, ok := strings.CutSuffix(s, "%")
	if ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err == nil && v > 0 && v <= 10000 {
			return v / 100, nil
		}
	}
	return 0, fmt.Errorf("bad CPU limit %q: want a percent of one core, like 10%% or 150%%, or off", s)
}
