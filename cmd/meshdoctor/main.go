// Command meshdoctor finds out why Istio traffic capture is broken on a Kubernetes node.
//
//	meshdoctor check     one pass over the node (or given network namespaces), print a report, exit
//	meshdoctor agent     the per-node DaemonSet process
//	meshdoctor cluster   every node's report through the API server, and cluster-level root causes
//	                     (also kubectl's plugin: installed as kubectl-meshdoctor, "kubectl meshdoctor")
//	meshdoctor version   print the version
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes of the contract.
const (
	exitOK       = 0
	exitFindings = 1
	exitCannot   = 2
)

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[0], os.Args[1:])
	stop()
	os.Exit(code)
}

// run runs the command line; started as kubectl's plugin (kubectl-meshdoctor), the binary is the
// cluster command alone.
func run(ctx context.Context, argv0 string, args []string) int {
	var prof profiling
	root := rootFor(argv0, &prof)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if perr := prof.stop(); perr != nil {
		fmt.Fprintln(os.Stderr, "meshdoctor:", perr)
	}
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(os.Stderr, "meshdoctor:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(os.Stderr, "meshdoctor:", err)
	return exitCannot
}

// rootFor is the command line's root for the name the binary was started under.
func rootFor(argv0 string, prof *profiling) *cobra.Command {
	if isKubectlPlugin(argv0) {
		root := newClusterCommand("kubectl meshdoctor")
		root.SilenceUsage, root.SilenceErrors = true, true
		return root
	}
	return newRootCommand(prof)
}

func newRootCommand(prof *profiling) *cobra.Command {
	root := &cobra.Command{
		Use:   "meshdoctor",
		Short: "Find out why Istio traffic capture is broken on this node",
		Long: `meshdoctor enters every pod's network namespace on a node, verifies the traffic-capture
rules Istio should have written there (iptables-nft, iptables-legacy, native nftables; IPv4 and
IPv6), and names the root cause with its evidence and a remedy. It only reads: no rule, table or
lock is ever created in a pod's namespace.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: func(*cobra.Command, []string) error { return prof.start() },
	}
	prof.register(root.PersistentFlags())
	root.AddCommand(newCheckCommand(), newAgentCommand(), newClusterCommand("cluster"), newVersionCommand())
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print meshdoctor's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "meshdoctor %s\n", version)
			return err
		},
	}
}
