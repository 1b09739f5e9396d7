package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Targets are issue 6's scale targets (2 cores, 24 GiB, bench and control
// plane on the same machine), as printed next to the figures.
var Targets = []struct{ ID, Measure, Target string }{
	{"T1", "agents held (heartbeats), drops", "50,000 for 10 min, 0 drops"},
	{"T2", "CP RSS per connected agent (mTLS)", "<= 48 KB"},
	{"T3", "results/s durably committed, evaluated", ">= 20,000 for 5 min"},
	{"T4", "CP CPU per result", "<= 40 us"},
	{"T5", "fsyncs/s at T3 load / from heartbeats", "<= 200 / 0"},
	{"T6", "p99 result sent -> durable ack", "<= 25 ms at 16,000/s"},
	{"T7", "p99 failing result -> task acked by agent", "<= 50 ms, 10k agents"},
	{"T8", "all agents reconnected after CP restart", "<= 60 s, 50k agents"},
}

func kb(b uint64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

// WriteTable prints one run as a readable table.
func WriteTable(w io.Writer, r *Result) {
	aligned := " (aligned: one batch per agent and interval, as tend-agent)"
	if !r.AlignedChecks {
		aligned = " (spread: each check on its own schedule, one result per message)"
	}
	fmt.Fprintf(w, "tend-bench: %d agents x %d checks every %gs%s over %s; failure rate %g, trigger %s; window %.0fs\n",
		r.Agents, r.ChecksPerAgent, r.IntervalSeconds, aligned, r.Transport, r.FailureRate, r.Trigger, r.WindowSeconds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\tmeasure\tmeasured\ttarget")
	row := func(id, measured string) {
		for _, t := range Targets {
			if t.ID == id {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", id, t.Measure, measured, t.Target)
			}
		}
	}
	row("T1", fmt.Sprintf("%d held (min %d in window) of %d, %d drops", r.AgentsHeld, r.AgentsHeldMin, r.Agents, r.Drops))
	row("T2", fmt.Sprintf("%.1f KB anonymous (%.1f KB with the mapped database; RSS %s, idle %s)", r.CPRSSPerAgentKB, r.CPRSSTotalPerAgentKB, kb(r.CPRSSBytes), kb(r.CPRSSBaselineBytes)))
	row("T3", fmt.Sprintf("%.0f/s (offered %.0f/s)", r.ResultsPerSecond, r.OfferedPerSecond))
	row("T4", fmt.Sprintf("%.1f us (CP %.0f%% of a core)", r.CPUMicrosPerResult, r.CPCPUPercent))
	row("T5", fmt.Sprintf("%.1f/s", r.FsyncsPerSecond))
	row("T6", fmt.Sprintf("p50 %.2f ms, p99 %.2f ms, max %.1f ms (n=%d)", r.AckP50Ms, r.AckP99Ms, r.AckMaxMs, r.AckSamples))
	if r.AckSamples > 0 {
		fmt.Fprintf(tw, "\t  slowest second of the window\tsecond %d: max %.1f ms\t\n", r.WorstSecond, r.WorstSecondAckMaxMs)
	}
	row("T7", fmt.Sprintf("p50 %.1f ms, p99 %.1f ms, max %.1f ms (n=%d)", r.TriggerP50Ms, r.TriggerP99Ms, r.TriggerMaxMs, r.TriggerSamples))
	if rr := r.Restart; rr != nil {
		row("T8", fmt.Sprintf("%d/%d in %.1f s after the %s (down %.1f s; then p50 %.1f s, p90 %.1f s, all %.1f s)",
			rr.Reconnected, rr.Agents, rr.TotalSeconds, rr.Signal, rr.DownSeconds, rr.P50Seconds, rr.P90Seconds, rr.AllSeconds))
		fmt.Fprintf(tw, "\t  of which dial to Welcome\tp50 %.0f ms, p99 %.0f ms; last dial %.1f s after ready\t\n",
			rr.DialToWelcomeP50Ms, rr.DialToWelcomeP99Ms, rr.LastDialSeconds)
		fmt.Fprintf(tw, "\t  connection rate (1 s buckets)\tpeak %d welcomes/s, %d dials/s, %d attempts/s; backoff envelope allows %d dials/s; %d of %d attempts sooner than the envelope\t\n",
			rr.PeakWelcomesPerSecond, rr.PeakDialsPerSecond, rr.PeakAttemptsPerSecond, rr.EnvelopePeakPerSecond, rr.BackoffViolations, rr.Attempts)
		fmt.Fprintf(tw, "\t  TLS handshakes\t%d resumed a session, %d full\t\n", rr.Resumed, rr.FullHandshakes)
	} else {
		row("T8", "not run (--restart term|kill)")
	}
	tw.Flush()
	fmt.Fprintf(w, "CP memory: RSS %s = anonymous %s (Go heap in use %s, stacks %s for %.0f goroutines) + file-backed %s (bbolt's mmap)\n",
		kb(r.CPRSSBytes), kb(r.CPRSSAnonBytes), kb(r.CPHeapInuseBytes), kb(r.CPStackInuseBytes), r.CPGoroutines, kb(r.CPRSSBytes-min(r.CPRSSAnonBytes, r.CPRSSBytes)))
	fmt.Fprintf(w, "enrolled %d new agents in %.1f s (%.0f/s); all connected %.1f s after the first (%d source addresses)\n",
		r.Enrolled, r.EnrollSeconds, r.EnrollPerSecond, r.RampSeconds, r.SourceAddrs)
	fmt.Fprintf(w, "ingest: %.0f group commits/s of %.1f results, %.1f ms each (%.0f over 128 ms); %.1f results per batch; %.0f heartbeats/s; fsyncs: %s\n",
		r.CommitsPerSecond, r.ResultsPerCommit, r.CommitMs, r.SlowCommits, r.ResultsPerBatch, r.HeartbeatsPerSec, r.FsyncMethod)
	fmt.Fprintf(w, "remediation: %d triggers, %d tasks in the window; %d tasks rejected, %d failures given up without a task\n",
		r.Triggers, r.Tasks, r.TaskRejects, r.Unremediated)
	fmt.Fprintf(w, "consistency: %d results produced, %d stored once (%d of them acknowledged by a Welcome after a restart), %d duplicates, %d unacknowledged, %d task updates unacknowledged, %d drops, %d failed connects\n",
		r.TotalGenerated, r.TotalStored, r.AckedOnWelcome, r.TotalDuplicates, r.Unacked, r.UnackedUpdates, r.Drops, r.ConnectErrors)
	for i, e := range r.ConnectErrorReasons {
		if i == 5 {
			break
		}
		fmt.Fprintf(w, "failed connect: %s\n", e)
	}
	fmt.Fprintf(w, "bench process: %.0f%% of a core, RSS %s; machine: load %.1f, something waited for a CPU %.0f%% and for I/O %.0f%% of the window (PSI)\n",
		r.BenchCPUPercent, kb(r.BenchRSSBytes), r.LoadAverage, r.MachineCPUPressure, r.MachineIOPressure)
	for _, p := range r.Profiles {
		fmt.Fprintf(w, "profile: %s (go tool pprof -top %s)\n", p, p)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// WriteSweepTable prints a sweep, one row per fleet size.
func WriteSweepTable(w io.Writer, rs []*Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join([]string{"agents", "held", "drops", "results/s", "CP RSS", "KB/agent", "CPU us/result", "CP CPU %", "fsyncs/s", "ack p99 ms", "task p99 ms", "reconnect s", ""}, "\t"))
	for _, r := range rs {
		rec := "-"
		if r.Restart != nil {
			rec = fmt.Sprintf("%.1f", r.Restart.TotalSeconds)
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.0f\t%s\t%.1f\t%.1f\t%.0f\t%.1f\t%.2f\t%.1f\t%s\t\n",
			r.Agents, r.AgentsHeldMin, r.Drops, r.ResultsPerSecond, kb(r.CPRSSBytes), r.CPRSSPerAgentKB,
			r.CPUMicrosPerResult, r.CPCPUPercent, r.FsyncsPerSecond, r.AckP99Ms, r.TriggerP99Ms, rec)
	}
	tw.Flush()
}

// WriteJSON writes v as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// ReadResults reads the JSON that --json-file wrote for a sweep (an array)
// or a single run, so that it can be plotted again.
func ReadResults(r io.Reader) ([]*Result, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var rs []*Result
	if err := json.Unmarshal(b, &rs); err == nil {
		return rs, nil
	}
	var one Result
	if err := json.Unmarshal(b, &one); err != nil {
		return nil, fmt.Errorf("not tend-bench JSON: %w", err)
	}
	return []*Result{&one}, nil
}
