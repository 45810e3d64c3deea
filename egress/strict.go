package egress

import (
	"fmt"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/apis/apiserver/v1alpha1"
	"k8s.io/apiserver/pkg/apis/apiserver/v1beta1"
	"sigs.k8s.io/yaml"

	"isthmus.dev/certs/configfile"
)

// checkKeys decodes the file at path strictly, as kube-apiserver's loader
// does, to name a refused key with its line (kube-apiserver names only its
// path). It says nothing about a file it cannot read or whose apiVersion
// and kind it does not know: kube-apiserver's loader says that.
func checkKeys(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var tm metav1.TypeMeta
	if yaml.Unmarshal(data, &tm) != nil || tm.Kind != "EgressSelectorConfiguration" {
		return nil
	}
	var into any
	switch tm.APIVersion {
	case v1beta1.SchemeGroupVersion.String():
		into = &v1beta1.EgressSelectorConfiguration{}
	case v1alpha1.SchemeGroupVersion.String():
		into = &v1alpha1.EgressSelectorConfiguration{}
	default:
		return nil
	}
	if err := configfile.Decode(data, into); err != nil {
		if len(configfile.KeyErrors(err)) > 1 {
			return fmt.Errorf("\n%w", err)
		}
		return err
	}
	return nil
}
