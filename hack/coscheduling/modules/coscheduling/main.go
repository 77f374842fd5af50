// Command coscheduling-scheduler is kube-scheduler v1.36 with the Coscheduling plugin of
// kubernetes-sigs/scheduler-plugins registered, the form of scheduler-plugins' own cmd/scheduler/main.go with
// only that plugin. The plugin's sources are an adapted copy under schedulerplugins/ (see its README.md).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // for rest client metric registration
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-scheduler/app"

	// Registers CoschedulingArgs (and the other plugins' args types) in kube-scheduler's config scheme.
	_ "kubetune.local/coscheduling/schedulerplugins/apis/config/scheme"
	"kubetune.local/coscheduling/schedulerplugins/pkg/coscheduling"
)

func main() {
	command := app.NewSchedulerCommand(app.WithPlugin(coscheduling.Name, coscheduling.New))
	os.Exit(cli.Run(command))
}
