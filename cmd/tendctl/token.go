package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

func newTokenCmd(a *app) *cobra.Command {
	token := &cobra.Command{
		Use:   "token",
		Short: "Manage join tokens for enrolling agents",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageErrorf(cmd, "missing subcommand (want: token create)")
		},
	}
	var (
		ttl         time.Duration
		uses        uint32
		description string
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token; prints the token alone on stdout",
		Long: `Create a join token. The token, "<id>.<secret>.<ca pin>", is everything an
agent needs to enroll once: tend-agent --server ADDR --token TOKEN.

Only the token is printed on stdout, so that TOKEN=$(tendctl token create)
works; its id, expiry and uses go to stderr.`,
		Example: `  tendctl token create --ttl 1h --uses 3 --description "web fleet, rack 4"`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl <= 0 {
				return usageErrorf(cmd, "--ttl must be positive, got %s", ttl)
			}
			if uses < 1 {
				return usageErrorf(cmd, "--uses must be at least 1")
			}
			resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.CreateToken, &adminv1.CreateTokenRequest{
				Ttl:         durationpb.New(ttl),
				Uses:        uses,
				Description: description,
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, resp.GetToken())
			expires := "never"
			if resp.GetExpiresAt() != nil {
				t := resp.GetExpiresAt().AsTime()
				expires = fmt.Sprintf("%s (in %s)", t.Local().Format(time.RFC3339), humanDuration(t.Sub(a.now())))
			}
			fmt.Fprintf(a.stderr, "token %s: %d use(s), expires %s, CA pin %s\n", resp.GetId(), resp.GetUses(), expires, resp.GetCaPin())
			fmt.Fprintf(a.stderr, "enroll an agent with: tend-agent --server %s --token <token>\n", a.server)
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token can be used")
	create.Flags().Uint32Var(&uses, "uses", 1, "how many agents may enroll with it")
	create.Flags().StringVar(&description, "description", "", "free text stored with the token")
	token.AddCommand(create)
	return token
}
