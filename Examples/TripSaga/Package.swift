// swift-tools-version: 6.1
// A team's own saga in its own package: three services, a starter, handler tests and the team's
// own operator tool.
// It depends on SagaKit the way any user's package does (here by path; from a release, by URL)
// and uses only SagaKit's public products.
import PackageDescription

let package = Package(
    name: "TripSaga",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "trip-flight", targets: ["FlightService"]),
        .executable(name: "trip-hotel", targets: ["HotelService"]),
        .executable(name: "trip-payment", targets: ["PaymentService"]),
        .executable(name: "trip-starter", targets: ["TripStarter"]),
        .executable(name: "trip-tool", targets: ["TripTool"]),
    ],
    dependencies: [
        .package(name: "SagaKit", path: "../..")
    ],
    targets: [
        // The saga definition and the handlers, shared by the services and the tests.
        .target(name: "TripSaga", dependencies: [.product(name: "Participant", package: "SagaKit")]),
        .executableTarget(
            name: "FlightService",
            dependencies: ["TripSaga", .product(name: "Participant", package: "SagaKit"), .product(name: "SagaSQLite", package: "SagaKit")]),
        .executableTarget(
            name: "HotelService",
            dependencies: ["TripSaga", .product(name: "Participant", package: "SagaKit"), .product(name: "SagaSQLite", package: "SagaKit")]),
        .executableTarget(
            name: "PaymentService",
            dependencies: ["TripSaga", .product(name: "Participant", package: "SagaKit"), .product(name: "SagaSQLite", package: "SagaKit")]),
        .executableTarget(
            name: "TripStarter",
            dependencies: ["TripSaga", .product(name: "Participant", package: "SagaKit"), .product(name: "SagaSQLite", package: "SagaKit")]),
        // The operator tool (SagaOperator: the CLI and the web console; the services do not
        // link it).
        .executableTarget(
            name: "TripTool",
            dependencies: ["TripSaga", .product(name: "SagaOperator", package: "SagaKit")]),
        .testTarget(
            name: "TripSagaTests",
            dependencies: ["TripSaga", .product(name: "SagaTesting", package: "SagaKit")]),
    ]
)
