fn main() {
    print!("{}", oauth_operator::api::crds_yaml().unwrap());
}
