package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// policyStatusObject is the state of a policy's safety rails (`rearm -o
// json`; `describe policy` shows the same).
type policyStatusObject struct {
	BreakerOpen      bool             `json:"breakerOpen"`
	BreakerReason    string           `json:"breakerReason"`
	BreakerOpenedAt  *time.Time       `json:"breakerOpenedAt"`
	BreakerFailures  uint32           `json:"breakerFailures"`
	Correlated       bool             `json:"correlated"`
	CorrelatedReason string           `json:"correlatedReason"`
	FleetIncident    string           `json:"fleetIncident"`
	Running          uint32           `json:"running"`
	StartedLastHour  uint32           `json:"startedLastHour"`
	WouldHaveActed   []shadowDecision `json:"wouldHaveActed"`
}

// shadowDecision is one "would have acted" of a shadow policy.
type shadowDecision struct {
	At       *time.Time      `json:"at"`
	Incident string          `json:"incident"`
	Agent    string          `json:"agent"`
	Action   string          `json:"action"`
	Params   json.RawMessage `json:"params"`
	Reason   string          `json:"reason"`
}

func toPolicyStatusObject(st *adminv1.PolicyStatus) policyStatusObject {
	o := policyStatusObject{
		BreakerOpen: st.GetBreakerOpen(), BreakerReason: st.GetBreakerReason(), BreakerOpenedAt: timePtr(st.GetBreakerOpenedAt()),
		BreakerFailures: st.GetBreakerFailures(), Correlated: st.GetCorrelated(), CorrelatedReason: st.GetCorrelatedReason(),
		FleetIncident: st.GetFleetIncident(), Running: st.GetRunning(), StartedLastHour: st.GetStartedLastHour(),
		WouldHaveActed: []shadowDecision{},
	}
	for _, d := range st.GetWouldHaveActed() {
		params := json.RawMessage(d.GetParamsJson())
		if !json.Valid(params) {
			params = json.RawMessage("null")
		}
		o.WouldHaveActed = append(o.WouldHaveActed, shadowDecision{
			At: timePtr(d.GetAt()), Incident: d.GetIncident(), Agent: d.GetAgent(),
			Action: d.GetAction(), Params: params, Reason: d.GetReason(),
		})
	}
	return o
}

func newRearmCmd(a *app) *cobra.Command {
	var (
		comment string
		output  string
	)
	cmd := &cobra.Command{
		Use:   "rearm policy NAME [--comment TEXT]",
		Short: "Close a policy's circuit breaker and end its correlated-failure hold",
		Long: `Re-arm a policy that stopped acting: close its open circuit breaker (too many
failed attempts within the breaker's window) and end its correlated-failure
hold (too many of its agents failing at once), so that it may act again. The
breaker's count of failed attempts starts from zero; open incidents that were
held are decided again at once. The comment goes on their timelines.

Look first: tendctl describe policy NAME shows why the policy stopped.
Needs the operator or admin role.`,
		Example: `  tendctl describe policy web-nginx-down
  tendctl rearm policy web-nginx-down --comment "bad deploy rolled back"`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(output); err != nil {
				return usageErrorf(cmd, "-o: %v", err)
			}
			_, names, err := parseResource(cmd, args, resPolicies)
			if err != nil {
				return err
			}
			if len(names) != 1 {
				return usageErrorf(cmd, "rearm takes exactly one policy NAME, got %d", len(names))
			}
			name := names[0]
			// What was held, to say what re-arming ended (the status is
			// readable by every role).
			before, err := call(cmd.Context(), a, adminv1.AdminServiceClient.GetPolicy, &adminv1.GetPolicyRequest{Name: name})
			if err != nil {
				return err
			}
			resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.RearmPolicy, &adminv1.RearmPolicyRequest{Name: name, Comment: comment})
			if err != nil {
				return err
			}
			st := toPolicyStatusObject(resp.GetStatus())
			if output != formatTable {
				return printObject(a.stdout, output, st)
			}
			fmt.Fprintf(a.stdout, "policy/%s re-armed: %s\n", name, rearmSummary(a.now(), before.GetStatus(), st))
			return nil
		},
	}
	cmd.Flags().StringVar(&comment, "comment", "", "why, for the timelines of the policy's incidents")
	cmd.Flags().StringVarP(&output, "output", "o", formatTable, "output format: table (a sentence), json or yaml (the policy's safety status)")
	return cmd
}

// rearmSummary says what re-arming ended, from the status before and after.
func rearmSummary(now time.Time, before *adminv1.PolicyStatus, after policyStatusObject) string {
	var parts []string
	switch {
	case before == nil:
		parts = append(parts, "circuit breaker closed, correlated hold ended")
	default:
		if before.GetBreakerOpen() {
			s := "circuit breaker closed (it was open"
			if t := timePtr(before.GetBreakerOpenedAt()); t != nil {
				s += " since " + ago(now, t)
			}
			if r := before.GetBreakerReason(); r != "" {
				s += ": " + r
			}
			parts = append(parts, s+")")
		}
		if before.GetCorrelated() {
			s := "correlated-failure hold ended"
			if fi := before.GetFleetIncident(); fi != "" {
				s += " (fleet incident " + fi + ")"
			}
			parts = append(parts, s)
		}
		if len(parts) == 0 {
			parts = append(parts, "nothing was held (circuit breaker closed, no correlated-failure hold); its failure count starts from zero")
		}
	}
	if after.BreakerOpen || after.Correlated {
		parts = append(parts, "but it is held again: see tendctl describe policy")
	}
	return strings.Join(parts, "; ")
}
