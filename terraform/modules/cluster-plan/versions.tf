# Provider-free on purpose: everything here is computed from the variables, so the module
# validates, tests (`terraform test`) and even applies (outputs only) with no provider and no
# registry. Terraform >= 1.9: variable validations refer to other variables.
terraform {
  required_version = ">= 1.9.0"
}
