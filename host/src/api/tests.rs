use super::*;

#[test]
fn a_minimal_request_is_python_with_the_defaults() {
    let request: RunRequest = serde_json::from_str(r#"{"code": "print(1)"}"#).unwrap();
    let (job, uploads) = request.check().unwrap();
    assert_eq!((job.lang, job.timeout, uploads.len()), (Lang::Python, Some(Duration::from_secs(30)), 0));
}
