// Package disk is the tend-plugin-disk action plugin: disk.cleanup deletes
// (or quarantines) old files matching a pattern in one directory.
//
// Safety, in order of importance:
//   - The walk holds a file descriptor for every directory it is in and
//     does everything relative to it (openat with O_NOFOLLOW, fstatat,
//     unlinkat, renameat: walk.go), so no name, symlink or race can reach
//     outside the directory: a subdirectory swapped for a symlink mid-walk
//     is refused, not followed. The directory itself must not be a symlink
//     (checked with Lstat, and the opened directory must be the one
//     checked).
//   - Symlinks are never followed and never deleted; only regular files
//     are touched (devices, sockets, FIFOs and directories are left alone).
//   - With recursive, subdirectories on another file system are not entered
//     (like find -xdev), and depth is limited.
//   - The quarantine directory (.tend-quarantine at the top) is never
//     cleaned by pattern, only purged by age.
package disk

import (
	"context"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strings"
	"time"

	"tend.dev/tend/internal/actions"
	"tend.dev/tend/internal/version"
	"tend.dev/tend/plugins/sdk"
	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
)

// ActionCleanup is the plugin's one action.
const ActionCleanup = "disk.cleanup"

// QuarantineDir is the directory, at the top of the cleaned directory, that
// quarantined files are moved to, one subdirectory per task.
const QuarantineDir = ".tend-quarantine"

// Modes of disk.cleanup.
const (
	ModeDelete     = actions.ModeDelete
	ModeQuarantine = actions.ModeQuarantine
)

const (
	// maxDepth is how deep recursive goes below the directory.
	maxDepth = 32
	// maxListed is the most file names listed in the output.
	maxListed = 20
	// maxProblems is the most problems listed in the output.
	maxProblems = 10
)

// Plugin implements sdk.Action.
type Plugin struct {
	log *slog.Logger
	now func() time.Time
}

var _ sdk.Action = (*Plugin)(nil)

// New returns the plugin; log may be nil.
func New(log *slog.Logger) *Plugin {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{log: log, now: time.Now}
}

// Describe lists disk.cleanup and its parameters.
func (p *Plugin) Describe(context.Context) (*pluginv1.DescribeResponse, error) {
	return &pluginv1.DescribeResponse{
		Name:    "disk",
		Version: version.Version,
		Actions: []*pluginv1.ActionInfo{{
			Name:        "cleanup",
			Description: "Delete, or move to a quarantine with a TTL, the regular files in a directory whose base name matches a pattern and that are older than an age. Never follows symlinks, never leaves the directory.",
			Params: []*pluginv1.ParamInfo{
				{Name: "path", Type: "string", Required: true, Description: "the directory: an absolute, clean path, not a symlink, not /"},
				{Name: "pattern", Type: "string", Description: `glob on the base name (path/filepath.Match), default "*"`},
				{Name: "olderThan", Type: "string", Description: `only files last modified at least this long ago (Go duration), default "0s"`},
				{Name: "mode", Type: "string", Description: `"delete" (default) or "quarantine"`},
				{Name: "recursive", Type: "bool", Description: "also clean subdirectories on the same file system, default false"},
				{Name: "quarantineTTL", Type: "string", Description: `quarantine directories older than this are purged on every run (Go duration), default "24h"`},
			},
		}},
	}, nil
}

// cleanupParams are disk.cleanup's parameters, as internal/actions reads
// them for the control plane and the agent too.
type cleanupParams = actions.DiskCleanupParams

func parseCleanup(action string, m map[string]any) (cleanupParams, error) {
	if action != ActionCleanup {
		return cleanupParams{}, sdk.UnknownAction(action, ActionCleanup)
	}
	return actions.ParseDiskCleanup(m)
}

// Validate checks disk.cleanup's parameters.
func (p *Plugin) Validate(_ context.Context, action string, params map[string]any) error {
	_, err := parseCleanup(action, params)
	return err
}

// Execute cleans the directory.
func (p *Plugin) Execute(ctx context.Context, req sdk.ExecuteRequest) (sdk.ExecuteResult, error) {
	c, err := parseCleanup(req.Action, req.Params)
	if err != nil {
		return sdk.ExecuteResult{}, err
	}
	if c.Mode == ModeQuarantine && !sdk.ValidTaskID(req.TaskID) {
		return sdk.ExecuteResult{}, sdk.InvalidParamsf("mode quarantine names its directory after the task id, which must be 1-128 letters, digits, '-', '_' or '.'; got %s", sdk.Quote(req.TaskID, 64))
	}
	res := p.cleanup(ctx, c, req.TaskID)
	p.log.Info("disk cleanup", "path", c.Path, "mode", c.Mode, "task_id", req.TaskID, "success", res.Success, "files_deleted", res.Metrics["files_deleted"], "files_quarantined", res.Metrics["files_quarantined"])
	return res, nil
}

func (r *run) result() sdk.ExecuteResult {
	var b strings.Builder
	verb, n := "deleted", r.metrics["files_deleted"]
	if r.c.Mode == ModeQuarantine {
		verb, n = "quarantined", r.metrics["files_quarantined"]
	}
	fmt.Fprintf(&b, "%s %d file(s) in %s matching %s", verb, int(n), sdk.Quote(r.c.Path, 256), sdk.Quote(r.c.Pattern, 100))
	if r.c.OlderThan > 0 {
		fmt.Fprintf(&b, " older than %s", r.c.OlderThan)
	}
	if r.c.Recursive {
		b.WriteString(" (recursive)")
	}
	fmt.Fprintf(&b, "; %s freed", bytesString(r.metrics["bytes_freed"]))
	if r.c.Mode == ModeQuarantine {
		fmt.Fprintf(&b, "; moved to %s", sdk.Quote(path.Join(r.c.Path, QuarantineDir, r.taskID), 300))
	}
	if n := r.metrics["quarantine_purged"]; n > 0 {
		fmt.Fprintf(&b, "; purged %d quarantine dir(s) older than %s", int(n), r.c.QuarantineTTL)
	}
	if len(r.skipped) > 0 {
		var parts []string
		for why, n := range r.skipped {
			parts = append(parts, fmt.Sprintf("%d %s", n, why))
		}
		slices.Sort(parts)
		fmt.Fprintf(&b, "; left alone: %s", strings.Join(parts, ", "))
	}
	if len(r.problems) > 0 {
		fmt.Fprintf(&b, "\n%d problem(s):", len(r.problems))
		for i, p := range r.problems {
			if i == maxProblems {
				fmt.Fprintf(&b, "\n  … and %d more", len(r.problems)-maxProblems)
				break
			}
			b.WriteString("\n  " + p)
		}
	}
	if len(r.matched) > 0 {
		fmt.Fprintf(&b, "\n%s:", verb)
		for i, name := range r.matched {
			if i == maxListed {
				fmt.Fprintf(&b, " … and %d more", len(r.matched)-maxListed)
				break
			}
			b.WriteString(" " + sdk.Quote(name, 200))
		}
	}
	r.metrics["problems"] = float64(len(r.problems))
	return sdk.ExecuteResult{Success: len(r.problems) == 0, Output: b.String(), Metrics: r.metrics}
}

func bytesString(n float64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", int64(n))
	}
	div, exp := float64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", n/div, "KMGTP"[exp])
}
