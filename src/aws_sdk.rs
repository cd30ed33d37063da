//! The AWS SDK configuration that every client shares (Step Functions, the trail's S3
//! sink): region, an emulator's endpoint, static credentials for emulators, else the
//! standard credential chain.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sfn::config::Credentials;

use crate::config::AwsConfig;

pub async fn sdk_config(aws: &AwsConfig) -> SdkConfig {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new(aws.region.clone()));
    if let Some(endpoint) = &aws.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(creds) = &aws.static_credentials {
        let creds = Credentials::new(
            &creds.access_key_id,
            creds.secret_access_key.expose(),
            None,
            None,
            "stepgate-config",
        );
        loader = loader.credentials_provider(creds);
    }
    loader.load().await
}
