package main

import (
	"fmt"

	"github.com/spf13/cobra"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

func newApproveCmd(a *app) *cobra.Command {
	var (
		comment string
		output  string
	)
	cmd := &cobra.Command{
		Use:   "approve task ID [--comment TEXT]",
		Short: "Approve a remediation task that waits for approval",
		Long: `Approve a task of a policy with requireApproval: true. Such a task is created
in state awaiting_approval (unsigned, not sent) and waits until its approval
deadline (the policy's approvalTimeout); tendctl get tasks shows it, with the
time left. Once approved, the control plane decides again: within the
policy's budgets the task is signed and sent at once, else it waits for a
free slot. Who approved, when and the comment go on the incident's timeline.

Needs the operator or admin role.`,
		Example: `  tendctl get tasks
  tendctl approve task task-3f2a9c1d0b7e4a55 --comment "checked with the on-call DBA"
  tendctl approve task/task-3f2a9c1d0b7e4a55 -o json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(output); err != nil {
				return usageErrorf(cmd, "-o: %v", err)
			}
			_, ids, err := parseResource(cmd, args, resTasks)
			if err != nil {
				return err
			}
			if len(ids) != 1 {
				return usageErrorf(cmd, "approve takes exactly one task ID, got %d", len(ids))
			}
			resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.ApproveTask, &adminv1.ApproveTaskRequest{Id: ids[0], Comment: comment})
			if err != nil {
				return err
			}
			t := toTaskObject(resp.GetTask())
			if output != formatTable {
				return printObject(a.stdout, output, t)
			}
			by := t.ApprovedBy
			if by == "" {
				by = "you"
			}
			fmt.Fprintf(a.stdout, "task %s approved by %s; state %s%s\n", t.ID, by, t.State, approvedNext(t))
			return nil
		},
	}
	cmd.Flags().StringVar(&comment, "comment", "", "why, for the incident's timeline (one line)")
	cmd.Flags().StringVarP(&output, "output", "o", formatTable, "output format: table (a sentence), json or yaml (the task)")
	return cmd
}

// approvedNext says what happens to an approved task next, by its state.
func approvedNext(t taskObject) string {
	switch t.State {
	case taskAwaitingApproval:
		return " (the policy's budgets hold it: it is signed and sent when they allow; tendctl describe incident " + t.Incident + ")"
	case "pending":
		return fmt.Sprintf(" (signed, seq %d; sent when agent %s connects)", t.Seq, t.Agent)
	case "sent", "running":
		return fmt.Sprintf(" (signed, seq %d, sent to %s)", t.Seq, t.Agent)
	}
	return ""
}
